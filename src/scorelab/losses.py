"""Training losses. All three regress the backbone's raw output on its head's target at
x_t = alpha x0 + sigma z; they differ in how the noise level is drawn.

* ``DSMLoss`` — continuous denoising score matching (Score SDE Eq. 7), t ~ U(eps, T):
      weighting="none":       E || c (out - target) ||^2, c = head.loss_scale
                              (= Score SDE's lambda(t) = sigma^2 for the eps and score heads,
                              plain MSE in the head's own space for x0 and v);
      weighting="likelihood": E g(t)^2 || s_theta(x_t, t) - grad log p_0t(x_t | x0) ||^2
                              = E (g/sigma)^2 || eps_hat - z ||^2   (Song et al. 2021b, Thm. 1).
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

from scorelab.errors import ConfigError
from scorelab.sde import SDE, _bcast
from scorelab.score import ScoreModel

_REDUCE = ("mean", "sum")


class IncompatibleError(ConfigError):
    """A combination of components that cannot work together."""


class DenoisingLoss(abc.ABC):
    def __init__(self, reduce: str = "mean"):
        if reduce not in _REDUCE:
            raise ValueError(f"loss reduce must be one of {_REDUCE}, got {reduce!r}")
        self.reduce = reduce

    def check(self, sde: SDE) -> None:
        """Raise ``IncompatibleError`` if this loss cannot train on ``sde``."""

    @abc.abstractmethod
    def draw(self, sde: SDE, n: int, device, generator,
             dtype=torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        """Noise levels for a batch: times t [n], alpha [n], sigma [n]."""

    def weight(self, model: ScoreModel, x_t: Tensor, t: Tensor, alpha: Tensor,
               sigma: Tensor) -> Tensor | None:
        """Score-space weighting g^2 if any; None means the head's own scale."""
        return None

    def __call__(self, model: ScoreModel, x0: Tensor, y: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        # times in float64 for float64 data (exactness tests), else float32 (never lower)
        tdtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
        t, alpha, sigma = self.draw(model.sde, x0.shape[0], x0.device, generator, tdtype)
        a = _bcast(alpha, x0).to(x0.dtype)
        s = _bcast(sigma, x0).to(x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = a * x0 + s * noise
        out = model.output(x_t, t, y, (a, s))
        g2 = self.weight(model, x_t, t, alpha, sigma)
        if g2 is None:
            err = (out - model.head.target(x0, noise, a, s)) * model.head.loss_scale(a, s)
            sq = err * err
        else:
            err = model.head.to_eps(out, x_t, a, s) - noise
            sq = _bcast(g2, x0) / (s * s) * err * err
        per_sample = sq.flatten(1)
        per_sample = per_sample.mean(1) if self.reduce == "mean" else per_sample.sum(1)
        return per_sample.mean()


class DSMLoss(DenoisingLoss):
    """Args:
        weighting: "none" or "likelihood" (g(t)^2, the likelihood bound's weighting).
        reduce: "mean" or "sum" over data dimensions.
        eps: smallest training time (Score SDE: 1e-5), t ~ U(eps, T).
    """

    WEIGHTINGS = ("none", "likelihood")

    def __init__(self, weighting: str = "none", reduce: str = "mean", eps: float = 1e-5):
        super().__init__(reduce)
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"loss weighting must be one of {self.WEIGHTINGS}, got {weighting!r}")
        self.weighting = weighting
        self.eps = float(eps)

    def draw(self, sde, n, device, generator, dtype=torch.float32):
        t = torch.rand(n, generator=generator, device=device, dtype=dtype) \
            * (sde.T - self.eps) + self.eps
        alpha, sigma = sde.alpha_sigma(t)
        return t, alpha, sigma

    def weight(self, model, x_t, t, alpha, sigma):
        if self.weighting == "none":
            return None
        return model.sde.sde(x_t, t)[1] ** 2


class DDPMLoss(DenoisingLoss):
    """Ho et al. (2020) discrete-time loss on the VP SDE's DDPM chain: step i has label
    (N-1) t_i = i and DDPM's alpha_bar_i. The continuous samplers then read the model with
    alpha(t), sigma(t), which differ from the chain by O(1/N) (alpha_bar_i ~ exp(-B((i+1)/N)))."""

    def check(self, sde):
        if not hasattr(sde, "discrete_alpha_sigma"):
            raise IncompatibleError(
                f"loss=ddpm needs the discrete DDPM chain of sde=vp, but sde is "
                f"{type(sde).__name__}; use loss=dsm (any SDE) or loss=smld (VE)")

    def draw(self, sde, n, device, generator, dtype=torch.float32):
        i = torch.randint(0, sde.N, (n,), generator=generator, device=device)
        alpha, sigma = sde.discrete_alpha_sigma(i)
        return i.to(dtype) * (sde.T / (sde.N - 1)), alpha, sigma


class SMLDLoss(DenoisingLoss):
    """Song & Ermon (2019) noise-conditional score matching on the VE SDE's sigma ladder."""

    def check(self, sde):
        if not hasattr(sde, "discrete_sigmas"):
            raise IncompatibleError(
                f"loss=smld needs the geometric noise levels of sde=ve, but sde is "
                f"{type(sde).__name__}; use loss=dsm (any SDE) or loss=ddpm (VP)")

    def draw(self, sde, n, device, generator, dtype=torch.float32):
        i = torch.randint(0, sde.N, (n,), generator=generator, device=device)
        sigma = sde.table("discrete_sigmas", device)[i]
        return i.to(dtype) * (sde.T / (sde.N - 1)), torch.ones_like(sigma), sigma
