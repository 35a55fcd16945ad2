"""Training losses. All three regress the backbone's raw output on its head's target at
x_t = alpha x0 + sigma z; they differ in how the noise level is drawn.

* ``DSMLoss`` — continuous denoising score matching (Score SDE Eq. 7):
      weighting="none":       E || c (out - target) ||^2, c = head.loss_scale
                              (= Score SDE's lambda(t) = sigma^2 for the eps and score heads,
                              plain MSE in the head's own space for x0 and v, EDM's
                              lambda = 1 / c_out^2 for the edm head);
      weighting="likelihood": E g(t)^2 || s_theta(x_t, t) - grad log p_0t(x_t | x0) ||^2
                              = E (g/sigma)^2 || eps_hat - z ||^2   (Song et al. 2021b, Thm. 1);
      weighting="min_snr":    E min(SNR, gamma) || x0_hat - x0 ||^2, SNR = alpha^2 / sigma^2
                              (Hang et al. 2023). In each head's own space this is the
                              paper's per-head weight: eps min(SNR, gamma) / SNR, x0
                              min(SNR, gamma), v min(SNR, gamma) / (SNR + 1) on VP;
      weighting="velocity":   E || u_hat - (alpha' x0 + sigma' z) ||^2, conditional flow
                              matching (Lipman et al. 2023, Eq. 9) for any head: u_hat is the
                              velocity its prediction implies. It is DSM weighted by
                              (alpha' sigma - alpha sigma')^2 / alpha^2 on eps_hat, and the
                              velocity head's own MSE (flow matching).
  The noise level is drawn by ``time_sampling``:
      "uniform":     t ~ U(eps, T) (Score SDE);
      "log_normal":  EDM's sigma = sigma(t) / alpha(t) with ln sigma ~ N(p_mean, p_std^2)
                     (Karras et al. 2022, Table 1: -1.2, 1.2), mapped to t through the
                     SDE's inverse log-SNR and clipped to [eps, T];
      "logit_normal": t = eps + (T - eps) sigmoid(u), u ~ N(p_mean, p_std^2)
                     (Esser et al. 2024);
      "end":         t = T always: one-step distillation of reflow's coupled pairs (Liu et
                     al. 2023, Sec. 2.3), where x_T is the noise z and the target is a
                     function of it (the velocity z - x of the pair on the linear path).
* ``DDPMLoss`` — Ho et al. 2020 Eq. 14: integer step i ~ U{0..N-1}, DDPM's discrete
  alpha_bar_i (VP only).
* ``SMLDLoss`` — Song & Ermon 2019 Eq. 5 with lambda = sigma_i^2: noise level sigma_i from
  the VE SDE's geometric ladder (VE only).

``reduce`` is over the data dimensions ("mean" or "sum"); the batch is always averaged.
Each loss can be given a ``torch.Generator`` so that validation losses are reproducible.

Every loss also takes the variational bound's term (Improved DDPM, Nichol & Dhariwal 2021,
Sec. 3.1), ``simple_weight`` L_simple + ``vlb_weight`` L_vlb per example, where

    L_vlb = N L_t / (d ln 2),   L_t = KL(q(x_s | x_t, x0) || p(x_s | x_t))   (bits/dim)

is the bound's sum over the N-step chain estimated at the loss's own t (unbiased for uniform
t; another time density weighs the steps by itself), s the chain's step
before t (``previous``: t - T/N for the continuous losses, the discrete ladder's i - 1 for
DDPM / SMLD), and -log p(x0 | x_t) (8-bit bins for images, ``decoder_bins``) where s reaches
the data. p's variance is the learned one (``reverse_step``: the model's variance channels)
or, without them, the posterior. With both weights > 0 (``loss=hybrid``, lambda = 0.001) the
mean enters L_vlb stop-gradient, so L_vlb trains the variance only; with simple_weight = 0
(``loss=vlb``) the bound trains both. ``vlb_time_sampling="importance"`` draws the chain
step k with p_k ~ sqrt(E[L_k^2]) over the last ``vlb_history`` values of each step (uniform
until every step has them, 0.1 % uniform after) and weighs the example by 1 / (N p_k), as
Improved DDPM's loss-second-moment sampler (their Sec. 3.3).
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from scorelab.likelihood.bound import decoder_nll
from scorelab.likelihood.reverse_step import (gaussian_kl, reverse_log_variance,
                                              step_coefficients)
from scorelab.util.checks import check_values, integer, number, one_of
from scorelab.models.prediction import Prediction
from scorelab.paths.sde import ForwardPath, batch_broadcast
from scorelab.models.score import ScoreModel

_REDUCE = ("mean", "sum")


class IncompatibleError(ValueError):
    """A combination of components that cannot work together (the command line names the
    overrides that chose them)."""


VLB_TIME_SAMPLINGS = ("uniform", "importance")


class StepHistory:
    """Improved DDPM's importance sampler over the N chain steps: the last ``size`` values of
    L_k of every step; p_k ~ sqrt(mean L_k^2) once every step has ``size`` of them (uniform
    before), mixed with 0.1 % uniform. Its state goes into the checkpoint (exact resume)."""

    UNIFORM = 1e-3

    def __init__(self, steps: int, size: int = 10):
        self.values = torch.zeros(steps, size, dtype=torch.float64)
        self.counts = torch.zeros(steps, dtype=torch.long)

    @property
    def warm(self) -> bool:
        return bool((self.counts >= self.values.shape[1]).all())

    def probabilities(self) -> Tensor:
        n = self.values.shape[0]
        if not self.warm:
            return torch.full((n,), 1.0 / n, dtype=torch.float64)
        w = self.values.pow(2).mean(1).sqrt()
        w = w / w.sum()
        return w * (1 - self.UNIFORM) + self.UNIFORM / n

    def draw(self, n: int, generator=None) -> tuple[Tensor, Tensor]:
        """n step indices and their weights 1 / (N p_k)."""
        p = self.probabilities()
        gen = generator if generator is not None and generator.device.type == "cpu" else None
        k = torch.multinomial(p, n, replacement=True, generator=gen)
        return k, 1.0 / (len(p) * p[k])

    def update(self, k: Tensor, values: Tensor) -> None:
        for step, value in zip(k.tolist(), values.detach().double().cpu().tolist()):
            size = self.values.shape[1]
            row = self.values[step]
            if self.counts[step] >= size:
                row[:-1] = row[1:].clone()
                row[-1] = value
            else:
                row[int(self.counts[step])] = value
            self.counts[step] += 1

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["values"].shape) != tuple(self.values.shape):
            raise ValueError(f"the checkpoint's vlb step history has shape "
                             f"{tuple(state['values'].shape)}, this loss "
                             f"{tuple(self.values.shape)} (path.N or loss.vlb_history changed)")
        self.values.copy_(state["values"])
        self.counts.copy_(state["counts"])


class DenoisingLoss(abc.ABC):
    """Args:
        reduce: "mean" or "sum" over the data dimensions.
        simple_weight: weight of the loss's own regression L_simple.
        vlb_weight: weight of the bound's term L_vlb (0: none; module doc).
        vlb_time_sampling: "uniform" (the loss's own times) or "importance".
        vlb_history: values per step kept by the importance sampler.
    """

    # the decoder's 8-bit bins (images in pixel space; the module sets None for vectors
    # and latents, where the decoder is a density)
    decoder_bins: int | None = 256

    def __init__(self, reduce: str = "mean", simple_weight: float = 1.0,
                 vlb_weight: float = 0.0, vlb_time_sampling: str = "uniform",
                 vlb_history: int = 10):
        if reduce not in _REDUCE:
            raise ValueError(f"loss reduce must be one of {_REDUCE}, got {reduce!r}")
        check_values("loss", dict(simple_weight=simple_weight, vlb_weight=vlb_weight,
                                  vlb_time_sampling=vlb_time_sampling, vlb_history=vlb_history),
                     {"simple_weight": number(0), "vlb_weight": number(0),
                      "vlb_time_sampling": one_of(VLB_TIME_SAMPLINGS, "vlb time sampling"),
                      "vlb_history": integer(1)})
        if simple_weight == 0 and vlb_weight == 0:
            raise ValueError("loss: simple_weight and vlb_weight are both 0: nothing to train")
        if vlb_time_sampling == "importance" and vlb_weight == 0:
            raise ValueError("loss.vlb_time_sampling=importance samples the bound's steps: it "
                             "needs loss.vlb_weight > 0 (loss=hybrid or loss=vlb)")
        self.reduce = reduce
        self.simple_weight, self.vlb_weight = float(simple_weight), float(vlb_weight)
        self.vlb_time_sampling, self.vlb_history = vlb_time_sampling, int(vlb_history)
        self.history: StepHistory | None = None

    def check(self, path: ForwardPath, head=None) -> None:
        """Raise ``IncompatibleError`` if this loss cannot train on ``path`` (with ``head``)."""

    def check_model(self, model: ScoreModel) -> None:
        """Raise ``IncompatibleError`` if this loss cannot train ``model``: the hybrid's bound
        term trains the variance channels only, so it needs them."""
        if self.vlb_weight > 0 and self.simple_weight > 0 and not model.learns_variance:
            raise IncompatibleError(
                "the hybrid loss's vlb term trains only the learned variance (its mean is "
                "stop-gradient), and this backbone has none: set backbone.learn_sigma=true "
                "(or loss=vlb, the bound alone, which trains the mean)")

    @abc.abstractmethod
    def draw(self, path: ForwardPath, n: int, device, generator,
             dtype=torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        """Noise levels for a batch: times t [n], alpha [n], sigma [n]."""

    @abc.abstractmethod
    def draw_steps(self, path: ForwardPath, k: Tensor, generator,
                   dtype=torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        """Noise levels in the chain steps k [n] (0 .. N-1, the importance sampler's)."""

    @abc.abstractmethod
    def previous(self, path: ForwardPath, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_s, sigma_s) [n] of the chain's step before t; (1, 0) where it is the data."""

    def squared_error(self, model: ScoreModel, out: Tensor, x0: Tensor, noise: Tensor,
                      x_t: Tensor, t: Tensor, c: tuple[Tensor, ...]) -> Tensor:
        """Weighted squared error per element; ``c`` = (alpha, sigma, alpha', sigma')
        broadcast against x0. The discrete losses use the head's own scale
        (``weighting="none"``)."""
        err = (out - model.head.target(x0, noise, *c)) * model.head.loss_scale(c[0], c[1])
        return err * err

    def vlb_term(self, model: ScoreModel, out: Tensor, var_frac: Tensor | None, x0: Tensor,
                 x_t: Tensor, t: Tensor, c: tuple[Tensor, ...]) -> Tensor:
        """N L_t in bits/dim per example (module doc), the mean stop-gradient when
        L_simple is trained too."""
        path = model.path
        alpha_t, sigma_t = c[0], c[1]
        alpha_s, sigma_s = (batch_broadcast(v, x0).to(x0.dtype) for v in self.previous(path, t))
        c_x, c_0, post, upper = step_coefficients(alpha_s, sigma_s, alpha_t, sigma_t)
        x0_hat = model.head.to_x0(out, x_t, *c)
        if self.simple_weight > 0:
            x0_hat = x0_hat.detach()
        data = sigma_s == 0                          # the step to the data: the decoder
        # the posterior variance there is 0; its log is the next step's (Improved DDPM)
        later = (t + path.T / path.N).clamp(max=path.T)
        a_l, s_l = (batch_broadcast(v, x0).to(x0.dtype) for v in path.alpha_sigma(later))
        clip = step_coefficients(alpha_t, sigma_t, a_l, s_l)[2]
        kind = "posterior" if var_frac is None else "learned"
        log_var = reverse_log_variance(kind, post, upper, var_frac, clip_posterior=clip)
        safe_post = torch.where(data, clip, post)
        kl = gaussian_kl(c_x * x_t + c_0 * x0, torch.log(safe_post),
                         c_x * x_t + c_0 * x0_hat, log_var).flatten(1).sum(1)
        # always computed (no host sync on whether the batch reaches the data)
        dec = decoder_nll(x0, x0_hat, log_var.expand_as(x0), self.decoder_bins)
        kl = torch.where(data.flatten(1)[:, 0], dec, kl)
        return kl * (path.N / (x0[0].numel() * math.log(2)))

    def __call__(self, model: ScoreModel, x0: Tensor, y: Tensor | None = None,
                 generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """The loss of a batch x0; ``noise``: the noise coupled with each x0 (reflow's
        pairs), else drawn independently."""
        # times in float64 for float64 data (exactness tests), else float32 (never lower)
        tdtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
        weights = steps = None
        if self.vlb_time_sampling == "importance" and model.training:
            if self.history is None:
                self.history = StepHistory(model.path.N, self.vlb_history)
            steps, weights = self.history.draw(x0.shape[0], generator)
            t, alpha, sigma = self.draw_steps(model.path, steps.to(x0.device), generator, tdtype)
        else:
            t, alpha, sigma = self.draw(model.path, x0.shape[0], x0.device, generator, tdtype)
        d_alpha, d_sigma = model.path.derivatives(t)
        c = tuple(batch_broadcast(v, x0).to(x0.dtype) for v in (alpha, sigma, d_alpha, d_sigma))
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = model.path.interpolate(x0, noise, c)
        out, var_frac = model.outputs(x_t, t, y, c)
        per_sample = 0.0
        if self.simple_weight > 0:
            sq = self.squared_error(model, out, x0, noise, x_t, t, c).flatten(1)
            simple = sq.mean(1) if self.reduce == "mean" else sq.sum(1)
            per_sample = self.simple_weight * simple
        if self.vlb_weight > 0:
            vlb = self.vlb_term(model, out, var_frac, x0, x_t, t, c)
            per_sample = per_sample + self.vlb_weight * vlb
            if steps is not None:
                self.history.update(steps, vlb / model.path.N)
                per_sample = per_sample * weights.to(device=x0.device, dtype=x0.dtype)
        return per_sample.mean()

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the loss (the importance sampler's history)."""
        return {} if self.history is None else {"history": self.history.state_dict()}

    def load_state_dict(self, state: dict, path: ForwardPath) -> None:
        if state.get("history") is not None and self.vlb_time_sampling == "importance":
            self.history = StepHistory(path.N, self.vlb_history)
            self.history.load_state_dict(state["history"])


class DSMLoss(DenoisingLoss):
    """Args:
        weighting: "none", "likelihood" (g(t)^2, the likelihood bound's weighting),
            "min_snr" (min(SNR, gamma) on the x0 error) or "velocity" (conditional flow
            matching: the MSE of the velocity implied by any head).
        reduce: "mean" or "sum" over data dimensions.
        eps: smallest training time (Score SDE: 1e-5); times lie in [eps, T].
        time_sampling: "uniform", "log_normal" (EDM), "logit_normal" (SD3) or "end"
            (t = T: one-step distillation of coupled pairs).
        p_mean, p_std: mean and std of ln sigma (log_normal) or of logit(t) (logit_normal).
        gamma: the min-SNR clip (Hang et al. 2023: 5).
        **bound: ``DenoisingLoss``'s simple_weight, vlb_weight, vlb_time_sampling, vlb_history.
    """

    WEIGHTINGS = ("none", "likelihood", "min_snr", "velocity")
    TIME_SAMPLINGS = ("uniform", "log_normal", "logit_normal", "end")

    def __init__(self, weighting: str = "none", reduce: str = "mean", eps: float = 1e-5,
                 time_sampling: str = "uniform", p_mean: float = -1.2, p_std: float = 1.2,
                 gamma: float = 5.0, **bound):
        super().__init__(reduce, **bound)
        check_values("loss", dict(weighting=weighting, time_sampling=time_sampling, eps=eps,
                                  p_mean=p_mean, p_std=p_std, gamma=gamma),
                     {"weighting": one_of(self.WEIGHTINGS, "weighting"),
                      "time_sampling": one_of(self.TIME_SAMPLINGS, "time sampling"),
                      "eps": number(0, 1, hi_open=True), "p_mean": number(),
                      "p_std": number(0, lo_open=True), "gamma": number(0, lo_open=True)})
        self.weighting = weighting
        self.eps = float(eps)
        self.time_sampling = time_sampling
        self.p_mean, self.p_std, self.gamma = float(p_mean), float(p_std), float(gamma)

    def draw(self, path, n, device, generator, dtype=torch.float32):
        lo = self.eps            # validated to lie in [0, 1)
        if self.time_sampling == "uniform":
            t = torch.rand(n, generator=generator, device=device, dtype=dtype) * (path.T - lo) + lo
        elif self.time_sampling == "end":
            t = torch.full((n,), float(path.T), device=device, dtype=dtype)
        else:
            u = torch.randn(n, generator=generator, device=device, dtype=dtype) * self.p_std \
                + self.p_mean
            if self.time_sampling == "logit_normal":
                t = lo + (path.T - lo) * torch.sigmoid(u)
            else:   # ln sigma_EDM = ln(sigma / alpha) = -log-SNR
                ends = path.log_snr(torch.tensor([path.T, lo], dtype=torch.float64))
                lam = (-u.double()).clamp(float(ends[0]), float(ends[1]))
                t = path.t_from_log_snr(lam).to(device=device, dtype=dtype).clamp(lo, path.T)
        alpha, sigma = path.alpha_sigma(t)
        return t, alpha, sigma

    def draw_steps(self, path, k, generator, dtype=torch.float32):
        u = torch.rand(k.shape, generator=generator, device=k.device, dtype=dtype)
        t = ((k.to(dtype) + u) * (path.T / path.N)).clamp(self.eps, path.T)
        alpha, sigma = path.alpha_sigma(t)
        return t, alpha, sigma

    def previous(self, path, t):
        """s = t - T/N: a chain of N steps with a random offset (the data where s <= 0)."""
        s = t - path.T / path.N
        alpha, sigma = path.alpha_sigma(s.clamp(min=0))
        data = s <= 0
        return torch.where(data, torch.ones_like(alpha), alpha), \
            torch.where(data, torch.zeros_like(sigma), sigma)

    def squared_error(self, model, out, x0, noise, x_t, t, c):
        alpha, sigma = c[0], c[1]
        if self.weighting == "none":
            return super().squared_error(model, out, x0, noise, x_t, t, c)
        if self.weighting == "likelihood":
            g2 = batch_broadcast(model.path.drift_diffusion(x_t, t)[1] ** 2, x0)
            err = model.head.to_eps(out, x_t, *c) - noise
            return g2 / (sigma * sigma) * err * err
        if self.weighting == "velocity":
            target = c[2] * x0 + c[3] * noise
            err = Prediction.from_head(model.head, out, x_t, c).velocity - target
            return err * err
        snr = (alpha * alpha) / (sigma * sigma)
        err = model.head.to_x0(out, x_t, *c) - x0
        return snr.clamp(max=self.gamma) * err * err


class DDPMLoss(DenoisingLoss):
    """Ho et al. (2020) discrete-time loss on the VP SDE's DDPM chain: step i has label
    (N-1) t_i = i and DDPM's alpha_bar_i. The continuous samplers then read the model with
    alpha(t), sigma(t), which differ from the chain by O(1/N) (alpha_bar_i ~ exp(-B((i+1)/N)))."""

    def check(self, path, head=None):
        if not hasattr(path, "discrete_alpha_sigma"):
            raise IncompatibleError(
                f"DDPMLoss needs the discrete DDPM chain of a VPSDE, but the path is "
                f"{type(path).__name__} (DSMLoss trains on any path, SMLDLoss on a VESDE)")
        if head is not None and head.name == "velocity":
            raise IncompatibleError(
                "DDPMLoss draws step 0 at t = 0, where VP's sigma' is infinite and the "
                "velocity head's target with it (DSMLoss trains the velocity head)")

    def draw(self, path, n, device, generator, dtype=torch.float32):
        i = torch.randint(0, path.N, (n,), generator=generator, device=device)
        return self.draw_steps(path, i, generator, dtype)

    def draw_steps(self, path, k, generator, dtype=torch.float32):
        alpha, sigma = path.discrete_alpha_sigma(k)
        return k.to(dtype) * (path.T / (path.N - 1)), alpha, sigma

    def previous(self, path, t):
        """DDPM's step i - 1 (i = 0: the data)."""
        i = path.discrete_index(t)
        alpha, sigma = path.discrete_alpha_sigma((i - 1).clamp(min=0))
        first = i == 0
        return torch.where(first, torch.ones_like(alpha), alpha).to(t.dtype), \
            torch.where(first, torch.zeros_like(sigma), sigma).to(t.dtype)


class SMLDLoss(DenoisingLoss):
    """Song & Ermon (2019) noise-conditional score matching on the VE SDE's sigma ladder."""

    def check(self, path, head=None):
        if not hasattr(path, "discrete_sigmas"):
            raise IncompatibleError(
                f"SMLDLoss needs the geometric noise levels of a VESDE, but the path is "
                f"{type(path).__name__} (DSMLoss trains on any path, DDPMLoss on a VPSDE)")

    def draw(self, path, n, device, generator, dtype=torch.float32):
        i = torch.randint(0, path.N, (n,), generator=generator, device=device)
        return self.draw_steps(path, i, generator, dtype)

    def draw_steps(self, path, k, generator, dtype=torch.float32):
        sigma = path.table("discrete_sigmas", k.device)[k]
        return k.to(dtype) * (path.T / (path.N - 1)), torch.ones_like(sigma), sigma

    def previous(self, path, t):
        """SMLD's level i - 1 (i = 0: the data)."""
        i = path.discrete_index(t)
        sigma = path.table("discrete_sigmas", t.device)[(i - 1).clamp(min=0)]
        return torch.ones_like(sigma).to(t.dtype), \
            torch.where(i == 0, torch.zeros_like(sigma), sigma).to(t.dtype)
