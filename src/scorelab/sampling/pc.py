"""Predictor–corrector samplers of the reverse-time SDE (Song et al. 2021, Sec. 4.2, Alg. 1-5).

Predictors step the reverse SDE from t to t - dt; correctors run Langevin MCMC at fixed t.
Each is a short stateless function; ``pc`` composes one of each.

Predictors (x -> x_next, and the noise-free mean x_mean):
* euler_maruyama:    x_mean = x - [f - g^2 s] dt,  x = x_mean + g sqrt(dt) z          (Eq. 6)
* reverse_diffusion: x_mean = x - f + G^2 s,       x = x_mean + G z  with the forward
                     discretisation (f, G) = sde.discretize (Eq. 45-47); on the SDE's own
                     N-step uniform grid exactly Score SDE's, else the exact kernel per step.
* ancestral:         a draw from q(x_s | x_t, x0 = x0_hat) of the linear SDE, s = t - dt:
                     mean = a sigma_s^2 / sigma_t^2 x + alpha_s s_ts^2 / sigma_t^2 x0_hat,
                     var = s_ts^2 sigma_s^2 / sigma_t^2 (a = alpha_t/alpha_s, s_ts^2 = sigma_t^2 - a^2 sigma_s^2).
                     On VP it is DDPM's ancestral step with the posterior variance
                     (Ho et al. Eq. 6-7); on VE the SMLD analogue (Score SDE Eq. 47).
* none.
Correctors:
* langevin: step = 2 r (snr |z| / |s|)^2 (batch-mean norms; r = alpha_i of Score SDE's
            Alg. 4, here alpha(t)^2 / alpha(t - T/N)^2), x += step s + sqrt(2 step) z.
* ald:      annealed Langevin dynamics (Song & Ermon 2019): step = 2 r (snr sigma(t))^2.
* none.
"""

from __future__ import annotations

import torch

from scorelab.checks import boolean, integer, number, one_of
from scorelab.sampling._util import randn_like, tweedie_denoise, x0_from_score
from scorelab.sampling.registry import register
from scorelab.sde import _bcast


def euler_maruyama_step(ctx, x, i):
    drift, g = ctx.rsde.sde(x, ctx.t(i))
    x_mean = x - drift * ctx.dts[i]
    return x_mean + _bcast(g, x) * ctx.sqrt_dts[i] * randn_like(x, ctx.generator), x_mean, 1


def reverse_diffusion_step(ctx, x, i):
    f, G = ctx.rsde.discretize(x, ctx.t(i), ctx.chain_dt(i))
    x_mean = x - f
    return x_mean + _bcast(G, x) * randn_like(x, ctx.generator), x_mean, 1


def ancestral_step(ctx, x, i):
    a_t, s_t, a_s, s_s = ctx.alphas[i], ctx.sigmas[i], ctx.alphas[i + 1], ctx.sigmas[i + 1]
    a = a_t / a_s
    var_ts = (s_t * s_t - a * a * s_s * s_s).clamp(min=0)
    x0 = x0_from_score(ctx.score_fn(x, ctx.t(i)), x, a_t, s_t)
    x_mean = (a * s_s * s_s / (s_t * s_t)) * x + (a_s * var_ts / (s_t * s_t)) * x0
    std = torch.sqrt(var_ts * s_s * s_s / (s_t * s_t))
    return x_mean + std * randn_like(x, ctx.generator), x_mean, 1


def no_step(ctx, x, i):
    return x, x, 0


def _batch_norm(v):
    return torch.linalg.vector_norm(v.flatten(1), dim=1).mean()


def langevin_step(ctx, x, i):
    x_mean = x
    for _ in range(ctx.n_steps):
        grad = ctx.score_fn(x, ctx.t(i))
        noise = randn_like(x, ctx.generator)
        step = 2 * ctx.alpha_ratio[i] * (ctx.snr * _batch_norm(noise) / _batch_norm(grad)) ** 2
        x_mean = x + step * grad
        x = x_mean + torch.sqrt(2 * step) * noise
    return x, x_mean, ctx.n_steps


def ald_step(ctx, x, i):
    step = 2 * ctx.alpha_ratio[i] * (ctx.snr * ctx.sigmas[i]) ** 2
    x_mean = x
    for _ in range(ctx.n_steps):
        grad = ctx.score_fn(x, ctx.t(i))
        x_mean = x + step * grad
        x = x_mean + torch.sqrt(2 * step) * randn_like(x, ctx.generator)
    return x, x_mean, ctx.n_steps


PREDICTORS = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step,
              "ancestral": ancestral_step, "none": no_step}
CORRECTORS = {"langevin": langevin_step, "ald": ald_step, "none": no_step}


class _Context:
    """Everything a step needs, computed once per sampling call (no per-step schedules)."""

    def __init__(self, score_fn, sde, x, ts, generator, snr, n_steps):
        self.score_fn, self.generator, self.snr, self.n_steps = score_fn, generator, snr, n_steps
        self.rsde = sde.reverse(score_fn)
        self.ts = ts
        self._times = ts[:, None].expand(len(ts), x.shape[0])      # row i: t_i per sample
        self.dts = ts[:-1] - ts[1:]
        self.sqrt_dts = self.dts.sqrt()
        self.alphas, self.sigmas = sde.alpha_sigma(ts)
        prev_alpha, _ = sde.alpha_sigma((ts - sde.T / sde.N).clamp(min=0))
        self.alpha_ratio = (self.alphas / prev_alpha) ** 2
        # The SDE's own chain (Score SDE) only on its own N-step uniform grid.
        uniform = torch.allclose(self.dts, self.dts[0].expand_as(self.dts), rtol=1e-3)
        self._own_chain = len(self.dts) == sde.N and uniform

    def t(self, i):
        return self._times[i]

    def chain_dt(self, i):
        return None if self._own_chain else self.dts[i]


def _check_pc(options):
    if options["predictor"] == "none" and options["corrector"] == "none":
        raise ValueError("sampler: predictor=none with corrector=none does nothing")


@register("pc", grid="uniform", combined=_check_pc,
          rules={"predictor": one_of(PREDICTORS, "predictor"),
                 "corrector": one_of(CORRECTORS, "corrector"),
                 "snr": number(0, lo_open=True), "n_steps": integer(1), "denoise": boolean()})
def predictor_corrector(score_fn, sde, x, ts, *, generator=None, callback=None,
                        predictor: str = "euler_maruyama", corrector: str = "none",
                        snr: float = 0.16, n_steps: int = 1, denoise: bool = True):
    """Alg. 1 of Score SDE: at each grid time a corrector then a predictor step.
    ``denoise``: finish with the noise-free Tweedie step x0_hat(x, eps) (+1 NFE)."""
    predict, correct = PREDICTORS[predictor], CORRECTORS[corrector]
    ctx = _Context(score_fn, sde, x, ts, generator, snr, n_steps)
    nfe = 0
    for i in range(len(ts) - 1):
        x, _, n_c = correct(ctx, x, i)
        x, _, n_p = predict(ctx, x, i)
        nfe += n_c + n_p
        if callback is not None:
            callback(i, x)
    if denoise:
        x = tweedie_denoise(score_fn, x, ts[-1], ctx.alphas[-1], ctx.sigmas[-1])
        nfe += 1
    return x, nfe
