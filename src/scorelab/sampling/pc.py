"""Predictor–corrector samplers of the reverse-time SDE (Song et al. 2021, Sec. 4.2, Alg. 1-5).

Predictors step the reverse SDE from t to t - dt; correctors run Langevin MCMC at fixed t.
Each is a short stateless function; ``pc`` composes one of each.

Predictors (x -> x_next, and the noise-free mean x_mean):
* euler_maruyama:    x_mean = x - [u - g~^2 s / 2] dt,  x = x_mean + g~ sqrt(dt) z  (Eq. 6),
                     u the probability-flow velocity (= f x - g^2 s / 2) and s the score of
                     the model's prediction. Any g~ keeps the marginals (the SDE family of
                     SiT, Ma et al. 2024, with w = g~^2 / 2); ``diffusion`` picks it:
                     "sde" g~ = g (Score SDE's reverse SDE), "sigma" g~^2 = 2 sigma(t) (SiT's
                     default; finite at alpha(T) = 0, where g is not), "constant" g~^2 = 2;
                     times ``diffusion_scale``.
* reverse_diffusion: x_mean = x - f + G^2 s,       x = x_mean + G z  with the forward
                     discretisation (f, G) = path.discretize (Eq. 45-47); on the SDE's own
                     N-step uniform grid exactly Score SDE's, else the exact kernel per step
                     (needs alpha(T) > 0).
* ancestral:         a draw from q(x_s | x_t, x0 = x0_hat) of the linear SDE, s = t - dt:
                     mean = a sigma_s^2 / sigma_t^2 x + alpha_s s_ts^2 / sigma_t^2 x0_hat,
                     var = s_ts^2 sigma_s^2 / sigma_t^2 (a = alpha_t/alpha_s,
                     s_ts^2 = sigma_t^2 - a^2 sigma_s^2).
                     On VP it is DDPM's ancestral step with the posterior variance
                     (Ho et al. Eq. 6-7); on VE the SMLD analogue (Score SDE Eq. 47).
                     ``variance`` replaces var by DDPM's upper s_ts^2, Improved DDPM's
                     learned interpolation or Analytic-DPM's optimum
                     (``scorelab.likelihood.reverse_step``).
* none.
Correctors:
* langevin: step = 2 r (snr |z| / |s|)^2 (batch-mean norms; r = alpha_i of Score SDE's
            Alg. 4, here alpha(t)^2 / alpha(t - T/N)^2), x += step s + sqrt(2 step) z.
* ald:      annealed Langevin dynamics (Song & Ermon 2019): step = 2 r (snr sigma(t))^2.
* none.
"""

from __future__ import annotations

import torch

from scorelab.likelihood.reverse_step import (VARIANCES, reverse_log_variance,
                                              step_coefficients)
from scorelab.util.checks import Rule, boolean, integer, number, one_of
from scorelab.sampling.common import (after_step, check_leftover_noise, per_sample_times,
                                      randn_like, tweedie_denoise)
from scorelab.sampling.registry import register
from scorelab.paths.sde import batch_broadcast


def euler_maruyama_step(ctx, x, i):
    pred = ctx.model(x, ctx.t(i))
    drift = pred.velocity - 0.5 * ctx.g2[i] * pred.score
    x_mean = x - drift * ctx.dts[i]
    return x_mean + torch.sqrt(ctx.g2[i] * ctx.dts[i]) * randn_like(x, ctx.generator), x_mean, 1


def reverse_diffusion_step(ctx, x, i):
    f, G = ctx.rsde.discretize(x, ctx.t(i), ctx.chain_dt(i))
    x_mean = x - f
    return x_mean + batch_broadcast(G, x) * randn_like(x, ctx.generator), x_mean, 1


def ancestral_step(ctx, x, i):
    a_t, s_t, a_s, s_s = ctx.alphas[i], ctx.sigmas[i], ctx.alphas[i + 1], ctx.sigmas[i + 1]
    c_x, c_0, post, upper = step_coefficients(a_s, s_s, a_t, s_t)
    pred = ctx.model(x, ctx.t(i))
    x_mean = c_x * x + c_0 * pred.x0
    if ctx.variance == "posterior":
        std = torch.sqrt(post)
    else:
        m = None if ctx.x0_variance is None else ctx.x0_variance[i]
        var_frac = None if pred.var_frac is None else pred.var_frac.to(x.dtype)
        std = torch.exp(0.5 * reverse_log_variance(ctx.variance, post, upper, var_frac, c_0, m))
    return x_mean + std * randn_like(x, ctx.generator), x_mean, 1


def no_step(ctx, x, i):
    return x, x, 0


def _batch_norm(v):
    return torch.linalg.vector_norm(v.flatten(1), dim=1).mean()


def langevin_step(ctx, x, i):
    x_mean = x
    for _ in range(ctx.n_steps):
        grad = ctx.model(x, ctx.t(i)).score
        noise = randn_like(x, ctx.generator)
        step = 2 * ctx.alpha_ratio[i] * (ctx.snr * _batch_norm(noise) / _batch_norm(grad)) ** 2
        x_mean = x + step * grad
        x = x_mean + torch.sqrt(2 * step) * noise
    return x, x_mean, ctx.n_steps


def ald_step(ctx, x, i):
    step = 2 * ctx.alpha_ratio[i] * (ctx.snr * ctx.sigmas[i]) ** 2
    x_mean = x
    for _ in range(ctx.n_steps):
        grad = ctx.model(x, ctx.t(i)).score
        x_mean = x + step * grad
        x = x_mean + torch.sqrt(2 * step) * randn_like(x, ctx.generator)
    return x, x_mean, ctx.n_steps


PREDICTORS = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step,
              "ancestral": ancestral_step, "none": no_step}
CORRECTORS = {"langevin": langevin_step, "ald": ald_step, "none": no_step}


DIFFUSIONS = ("sde", "sigma", "constant")


def reverse_diffusion_g2(path, ts, diffusion: str = "sde", scale: float = 1.0):
    """g~(t)^2 of the marginal-preserving reverse SDE on the grid ``ts`` (see the module doc)."""
    if diffusion == "sde":
        zeros = torch.zeros(len(ts), 1, dtype=ts.dtype, device=ts.device)
        g2 = path.drift_diffusion(zeros, ts)[1] ** 2
    elif diffusion == "sigma":
        g2 = 2 * path.alpha_sigma(ts)[1]
    else:
        g2 = torch.full_like(ts, 2.0)
    return scale * g2


class _Context:
    """Everything a step needs, computed once per sampling call (no per-step schedules)."""

    def __init__(self, model, path, x, ts, generator, snr, n_steps, diffusion, scale,
                 variance="posterior", x0_variance=None):
        self.model, self.generator, self.snr, self.n_steps = model, generator, snr, n_steps
        # Analytic-DPM's m_t on the grid, looked up once per sampling call
        self.variance = variance
        self.x0_variance = None if x0_variance is None else x0_variance(ts)
        self.rsde = path.reverse(lambda x, t: model(x, t).score)
        self.ts = ts
        self.g2 = reverse_diffusion_g2(path, ts, diffusion, scale)
        self._times = per_sample_times(ts, x.shape[0])
        self.dts = ts[:-1] - ts[1:]
        self.sqrt_dts = self.dts.sqrt()
        self.alphas, self.sigmas = path.alpha_sigma(ts)
        prev_alpha, _ = path.alpha_sigma((ts - path.T / path.N).clamp(min=0))
        self.alpha_ratio = (self.alphas / prev_alpha) ** 2
        # The SDE's own chain (Score SDE) only on its own N-step uniform grid.
        uniform = torch.allclose(self.dts, self.dts[0].expand_as(self.dts), rtol=1e-3)
        self._own_chain = len(self.dts) == path.N and uniform

    def t(self, i):
        return self._times[i]

    def chain_dt(self, i):
        return None if self._own_chain else self.dts[i]


def _check_pc(options):
    if options["predictor"] == "none" and options["corrector"] == "none":
        raise ValueError("sampler: predictor=none with corrector=none does nothing")
    if options.get("variance", "posterior") != "posterior" and options["predictor"] != "ancestral":
        raise ValueError(f"sampler.variance={options['variance']} is the reverse variance of the "
                         f"ancestral step: it needs predictor=ancestral, not "
                         f"{options['predictor']}")
    if options["predictor"] != "euler_maruyama":
        for key, default in (("diffusion", "sde"), ("diffusion_scale", 1.0)):
            if options.get(key, default) != default:
                raise ValueError(f"sampler.{key}={options[key]} needs predictor="
                                 f"euler_maruyama, not {options['predictor']}")


def _check_pc_path(options, path, ts):
    """What the path must allow on any stretch of grid: finite g~; reverse_diffusion needs
    alpha > 0."""
    predictor = options.get("predictor", "euler_maruyama")
    if predictor == "reverse_diffusion" and path.alpha_vanishes:
        raise ValueError("sampler predictor=reverse_diffusion needs alpha(T) > 0 (its step "
                         "divides by alpha); on this path use predictor=ancestral, or "
                         "euler_maruyama with diffusion=sigma")
    if predictor == "euler_maruyama":
        g2 = reverse_diffusion_g2(path, ts, options.get("diffusion", "sde"))
        if not torch.isfinite(g2[:-1]).all():
            raise ValueError("sampler diffusion=sde: the path's g(t) is infinite at t = T "
                             "(alpha(T) = 0); use diffusion=sigma or constant")


def _check_pc_grid(options, path, ts):
    """``_check_pc_path``, and on the whole grid from the prior: Euler–Maruyama steps that do
    not leave the prior's noise in the sample (``leftover_noise``; reverse_diffusion and
    ancestral steps shrink it at any step size). RePaint's segments are not checked alone."""
    _check_pc_path(options, path, ts)
    if float(ts[-1]) == 0 and options.get("predictor", "euler_maruyama") != "ancestral":
        raise ValueError(f"sampler pc: a grid that ends at t = 0 (sigma = 0) needs "
                         f"predictor=ancestral, whose last step returns x0_hat; "
                         f"{options['predictor']} divides by sigma there")
    if options.get("predictor", "euler_maruyama") == "euler_maruyama":
        g2 = reverse_diffusion_g2(path, ts, options.get("diffusion", "sde"),
                                  options.get("diffusion_scale", 1.0))
        check_leftover_noise("sampler pc (predictor=euler_maruyama)", path, ts, g2)


# An Analytic-DPM moment table (``reverse_step.X0Variance``), built from data by the caller
# (``X0Variance.estimate``; sample.py and evaluate.py build it from the run's training data).
X0_VARIANCE_RULE = Rule(lambda v: v is None or callable(v),
                        "an X0Variance (scorelab.likelihood.reverse_step) or null")


def check_analytic(options):
    """variance=analytic needs the model's moments, x0_variance (checked when sampling: a
    config names the variance, and the command line estimates the moments before the first
    sample)."""
    if options.get("variance") == "analytic" and options.get("x0_variance") is None:
        raise ValueError("sampler.variance=analytic needs the model's x0 variance on data "
                         "(x0_variance = X0Variance.estimate(...); sample.py and evaluate.py "
                         "estimate it from the training data)")


@register("pc", grid="uniform", combined=_check_pc, path_check=_check_pc_grid, to_zero=True,
          rules={"predictor": one_of(PREDICTORS, "predictor"),
                 "variance": one_of(VARIANCES, "reverse variance"),
                 "x0_variance": X0_VARIANCE_RULE,
                 "corrector": one_of(CORRECTORS, "corrector"),
                 "snr": number(0, lo_open=True), "n_steps": integer(1), "denoise": boolean(),
                 "diffusion": one_of(DIFFUSIONS, "diffusion"),
                 "diffusion_scale": number(0, lo_open=True)})
def predictor_corrector(model, path, x, ts, *, generator=None, callback=None,
                        predictor: str = "euler_maruyama", corrector: str = "none",
                        snr: float = 0.16, n_steps: int = 1, denoise: bool = True,
                        diffusion: str = "sde", diffusion_scale: float = 1.0,
                        variance: str = "posterior", x0_variance=None):
    """Alg. 1 of Score SDE: at each grid time a corrector then a predictor step.
    ``denoise``: finish with the noise-free Tweedie step x0_hat(x, eps) (+1 NFE); a grid
    that ends at t = 0 (``final="zero"``, ``grid=scheduler``: DDPM's own loop) needs none,
    its last ancestral step is that x0_hat.
    ``diffusion``, ``diffusion_scale``: g~^2 of the euler_maruyama predictor.
    ``variance``: the ancestral step's reverse variance (posterior, upper, learned,
    analytic); ``x0_variance``: the ``X0Variance`` that ``analytic`` needs."""
    _check_pc_path(dict(predictor=predictor, diffusion=diffusion), path, ts)
    check_analytic(dict(variance=variance, x0_variance=x0_variance))
    predict, correct = PREDICTORS[predictor], CORRECTORS[corrector]
    ctx = _Context(model, path, x, ts, generator, snr, n_steps, diffusion, diffusion_scale,
                   variance, x0_variance)
    nfe = 0
    for i in range(len(ts) - 1):
        x, _, n_c = correct(ctx, x, i)
        x, _, n_p = predict(ctx, x, i)
        nfe += n_c + n_p
        x = after_step(callback, i, x)
    if denoise and float(ts[-1]) > 0:
        x = tweedie_denoise(model, x, ts[-1])
        nfe += 1
    return x, nfe
