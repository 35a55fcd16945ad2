"""A Gaussian mixture with diagonal covariances: the project's ground truth.

p_0(x) = sum_k w_k N(x; mu_k, diag(s_k^2)). Under any of the SDEs, x_t = alpha x_0 + sigma z,
so the noised marginal is again a mixture, with closed-form log-density and score:

    p_t(x) = sum_k w_k N(x; alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)),
    grad log p_t(x) = sum_k r_k(x) * (-(x - alpha mu_k) / (alpha^2 s_k^2 + sigma^2)),

with responsibilities r_k(x) = w_k N_k(x) / p_t(x). ``score_fn(path)`` is an exact
``score_fn(x, t)`` oracle for the samplers, ``prediction_fn`` the exact denoiser (valid at
alpha = 0 too), ``log_prob`` the exact likelihood.

With the component as class label, the mixture is also the exact class-conditional model:
p_t(x | y = k) is component k alone (``conditional_prediction_fn``, where ``NULL_LABEL``
gives the marginal) and p_t(y | x) = r_y(x) is the exact noisy classifier
(``classifier_fn``), the ground truth of classifier-free and classifier guidance.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scorelab.models.conditioning import NULL_LABEL
from scorelab.models.prediction import Prediction, prediction_fn
from scorelab.paths.sde import ForwardPath


class GaussianMixture:
    """Args:
        means: [K, d] component means.
        stds: [K, d] (or [K], isotropic) component standard deviations.
        weights: [K] mixture weights (normalised here); uniform if None.
    """

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float32)
        stds = torch.as_tensor(stds, dtype=torch.float32)
        if stds.dim() == 1:
            stds = stds[:, None].expand_as(means)
        if weights is None:
            weights = torch.ones(means.shape[0])
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if means.dim() != 2 or stds.shape != means.shape or weights.shape != means.shape[:1]:
            raise ValueError("GaussianMixture needs means [K,d], stds [K,d] or [K], weights [K]")
        if (stds <= 0).any() or (weights < 0).any():
            raise ValueError("GaussianMixture needs positive stds and non-negative weights")
        self.means, self.stds = means, stds.contiguous()
        self.weights = weights / weights.sum()

    @classmethod
    def ring(cls, dim: int = 2, n_components: int = 8, radius: float = 1.0,
             std: float = 0.1, weights=None) -> "GaussianMixture":
        """Means evenly spaced on a circle in the first two coordinates (zero elsewhere)."""
        if dim < 2:
            raise ValueError("a ring mixture needs dim >= 2")
        angle = torch.arange(n_components) * (2 * math.pi / n_components)
        means = torch.zeros(n_components, dim)
        means[:, 0], means[:, 1] = radius * torch.cos(angle), radius * torch.sin(angle)
        return cls(means, torch.full((n_components,), float(std)), weights)

    @classmethod
    def random(cls, dim: int = 2, n_components: int = 8, radius: float = 1.0,
               std: float = 0.1, seed: int = 0, weights=None) -> "GaussianMixture":
        """Means uniform in [-radius, radius]^d, drawn from a fixed seed."""
        g = torch.Generator().manual_seed(seed)
        means = (torch.rand(n_components, dim, generator=g) * 2 - 1) * radius
        return cls(means, torch.full((n_components,), float(std)), weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n samples [n, d] and their component labels [n]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator)
        return self.means[k] + self.stds[k] * z, k

    def _components(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """log w_k + log N_k(x) [B, K] and the per-component mean and variance."""
        mu = self.means.to(x)[None] * alpha.to(x)[:, None, None]            # [B,K,d]
        var = (alpha.to(x)[:, None, None] ** 2) * self.stds.to(x)[None] ** 2 \
            + sigma.to(x)[:, None, None] ** 2
        diff = x[:, None, :] - mu
        log_n = -0.5 * ((diff * diff) / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.log(self.weights.to(x))[None] + log_n, diff, var

    def noised_log_prob(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """log p_t(x) [B] for x [B, d] with per-sample alpha, sigma [B]."""
        logits, _, _ = self._components(x, alpha, sigma)
        return torch.logsumexp(logits, dim=1)

    def noised_score(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """grad_x log p_t(x) [B, d]."""
        logits, diff, var = self._components(x, alpha, sigma)
        r = torch.softmax(logits, dim=1)[:, :, None]
        return -(r * diff / var).sum(1)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p_0(x) [B] of the clean data."""
        one = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        return self.noised_log_prob(x, one, torch.zeros_like(one))

    def score_fn(self, path: ForwardPath):
        """The exact score of the SDE's noised marginals, as a plain ``score_fn(x, t)``."""
        def score(x: Tensor, t: Tensor) -> Tensor:
            alpha, sigma = path.alpha_sigma(t)
            return self.noised_score(x, alpha, sigma)
        return score

    def noised_denoiser(self, x: Tensor, alpha: Tensor, sigma: Tensor,
                        y: Tensor | None = None) -> Tensor:
        """E[x0 | x_t = x] [B, d] = sum_k r_k (mu_k + alpha s_k^2 (x - alpha mu_k) / var_k):
        finite at alpha = 0 (where it is the data mean), unlike (x + sigma^2 score) / alpha.
        With labels y [B]: E[x0 | x_t = x, y] (r = one-hot of y; ``NULL_LABEL``: marginal)."""
        logits, diff, var = self._components(x, alpha, sigma)
        if y is not None:
            given = (y != NULL_LABEL)[:, None]
            own = torch.nn.functional.one_hot(y.clamp(min=0), self.n_components).bool()
            logits = torch.where(given & ~own, float("-inf"), logits)
        r = torch.softmax(logits, dim=1)[:, :, None]
        a = alpha.to(x)[:, None, None]
        post = self.means.to(x)[None] + a * self.stds.to(x)[None] ** 2 * diff / var
        return (r * post).sum(1)

    def prediction_fn(self, path: ForwardPath):
        """The exact prediction (denoiser, hence eps, score, velocity) on any SDE or path."""
        def model(x: Tensor, t: Tensor) -> Prediction:
            alpha, sigma = path.alpha_sigma(t)
            return Prediction.from_x0(path, x, t, self.noised_denoiser(x, alpha, sigma))
        return prediction_fn(model)

    def conditional_prediction_fn(self, path: ForwardPath):
        """``predict(x, t, y) -> Prediction``: the exact prediction of p_t(x | y), y [B]
        component labels (``NULL_LABEL``: the marginal p_t(x))."""
        def predict(x: Tensor, t: Tensor, y: Tensor | None = None) -> Prediction:
            alpha, sigma = path.alpha_sigma(t)
            return Prediction.from_x0(path, x, t, self.noised_denoiser(x, alpha, sigma, y))
        return predict

    def classifier_fn(self, path: ForwardPath):
        """``classifier(x, t) -> logits [B, K]``: log p_t(y | x) (the exact noisy
        classifier)."""
        def classifier(x: Tensor, t: Tensor) -> Tensor:
            alpha, sigma = path.alpha_sigma(t)
            return torch.log_softmax(self._components(x, alpha, sigma)[0], dim=1)
        return classifier

    def log_prob_fn(self, path: ForwardPath):
        """Exact log p_t(x) as ``log_prob(x, t)``."""
        def log_prob(x: Tensor, t: Tensor) -> Tensor:
            alpha, sigma = path.alpha_sigma(t)
            return self.noised_log_prob(x, alpha, sigma)
        return log_prob

    def assign(self, x: Tensor) -> Tensor:
        """Most likely component of each clean sample (for mode-weight checks)."""
        one = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        logits, _, _ = self._components(x, one, torch.zeros_like(one))
        return logits.argmax(1)
