"""Small helpers shared by the samplers."""

from __future__ import annotations

import torch
from torch import Tensor

from scorelab.sde import _bcast


def randn_like(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def x0_from_score(score: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Tweedie: E[x0 | x_t] = (x + sigma^2 score) / alpha (alpha, sigma scalars or [B])."""
    a, s = _bcast(alpha, x), _bcast(sigma, x)
    return (x + s * s * score) / a


def tweedie_denoise(score_fn, x: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The noise-free final step: x0_hat at the last grid time (one score evaluation)."""
    return x0_from_score(score_fn(x, t.expand(x.shape[0])), x, alpha, sigma)
