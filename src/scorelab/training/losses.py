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
                     (Esser et al. 2024).
* ``DDPMLoss`` — Ho et al. 2020 Eq. 14: integer step i ~ U{0..N-1}, DDPM's discrete
  alpha_bar_i (VP only).
* ``SMLDLoss`` — Song & Ermon 2019 Eq. 5 with lambda = sigma_i^2: noise level sigma_i from
  the VE SDE's geometric ladder (VE only).

``reduce`` is over the data dimensions ("mean" or "sum"); the batch is always averaged.
Each loss can be given a ``torch.Generator`` so that validation losses are reproducible.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from scorelab.util.checks import check_values, number, one_of
from scorelab.models.prediction import Prediction
from scorelab.paths.sde import ForwardPath, batch_broadcast
from scorelab.models.score import ScoreModel

_REDUCE = ("mean", "sum")


class IncompatibleError(ValueError):
    """A combination of components that cannot work together (the command line names the
    overrides that chose them)."""


class DenoisingLoss(abc.ABC):
    def __init__(self, reduce: str = "mean"):
        if reduce not in _REDUCE:
            raise ValueError(f"loss reduce must be one of {_REDUCE}, got {reduce!r}")
        self.reduce = reduce

    def check(self, path: ForwardPath, head=None) -> None:
        """Raise ``IncompatibleError`` if this loss cannot train on ``path`` (with ``head``)."""

    @abc.abstractmethod
    def draw(self, path: ForwardPath, n: int, device, generator,
             dtype=torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        """Noise levels for a batch: times t [n], alpha [n], sigma [n]."""

    def squared_error(self, model: ScoreModel, out: Tensor, x0: Tensor, noise: Tensor,
                      x_t: Tensor, t: Tensor, c: tuple[Tensor, ...]) -> Tensor:
        """Weighted squared error per element; ``c`` = (alpha, sigma, alpha', sigma')
        broadcast against x0. The discrete losses use the head's own scale
        (``weighting="none"``)."""
        err = (out - model.head.target(x0, noise, *c)) * model.head.loss_scale(c[0], c[1])
        return err * err

    def __call__(self, model: ScoreModel, x0: Tensor, y: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        # times in float64 for float64 data (exactness tests), else float32 (never lower)
        tdtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
        t, alpha, sigma = self.draw(model.path, x0.shape[0], x0.device, generator, tdtype)
        d_alpha, d_sigma = model.path.derivatives(t)
        c = tuple(batch_broadcast(v, x0).to(x0.dtype) for v in (alpha, sigma, d_alpha, d_sigma))
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = model.path.interpolate(x0, noise, c)
        out = model.output(x_t, t, y, c)
        sq = self.squared_error(model, out, x0, noise, x_t, t, c)
        per_sample = sq.flatten(1)
        per_sample = per_sample.mean(1) if self.reduce == "mean" else per_sample.sum(1)
        return per_sample.mean()


class DSMLoss(DenoisingLoss):
    """Args:
        weighting: "none", "likelihood" (g(t)^2, the likelihood bound's weighting),
            "min_snr" (min(SNR, gamma) on the x0 error) or "velocity" (conditional flow
            matching: the MSE of the velocity implied by any head).
        reduce: "mean" or "sum" over data dimensions.
        eps: smallest training time (Score SDE: 1e-5); times lie in [eps, T].
        time_sampling: "uniform", "log_normal" (EDM) or "logit_normal" (SD3).
        p_mean, p_std: mean and std of ln sigma (log_normal) or of logit(t) (logit_normal).
        gamma: the min-SNR clip (Hang et al. 2023: 5).
    """

    WEIGHTINGS = ("none", "likelihood", "min_snr", "velocity")
    TIME_SAMPLINGS = ("uniform", "log_normal", "logit_normal")

    def __init__(self, weighting: str = "none", reduce: str = "mean", eps: float = 1e-5,
                 time_sampling: str = "uniform", p_mean: float = -1.2, p_std: float = 1.2,
                 gamma: float = 5.0):
        super().__init__(reduce)
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
        alpha, sigma = path.discrete_alpha_sigma(i)
        return i.to(dtype) * (path.T / (path.N - 1)), alpha, sigma


class SMLDLoss(DenoisingLoss):
    """Song & Ermon (2019) noise-conditional score matching on the VE SDE's sigma ladder."""

    def check(self, path, head=None):
        if not hasattr(path, "discrete_sigmas"):
            raise IncompatibleError(
                f"SMLDLoss needs the geometric noise levels of a VESDE, but the path is "
                f"{type(path).__name__} (DSMLoss trains on any path, DDPMLoss on a VPSDE)")

    def draw(self, path, n, device, generator, dtype=torch.float32):
        i = torch.randint(0, path.N, (n,), generator=generator, device=device)
        sigma = path.table("discrete_sigmas", device)[i]
        return i.to(dtype) * (path.T / (path.N - 1)), torch.ones_like(sigma), sigma
