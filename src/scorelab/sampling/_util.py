"""Small helpers shared by the samplers."""

from __future__ import annotations

import torch
from torch import Tensor


def randn_like(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def tweedie_denoise(model, x: Tensor, t: Tensor) -> Tensor:
    """The noise-free final step: x0_hat at the last grid time (one model evaluation)."""
    return model(x, t.expand(x.shape[0])).x0
