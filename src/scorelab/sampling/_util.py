"""Small helpers shared by the samplers."""

from __future__ import annotations

import torch
from torch import Tensor


def randn_like(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def tweedie_denoise(model, x: Tensor, t: Tensor) -> Tensor:
    """The noise-free final step: x0_hat at the last grid time (one model evaluation)."""
    return model(x, t.expand(x.shape[0])).x0


def after_step(callback, i: int, x: Tensor) -> Tensor:
    """Call ``callback(i, x)`` after step i; a tensor it returns replaces x (the projection
    of controllable generation, ``scorelab.guidance.controllable``), None keeps x (progress bars)."""
    if callback is None:
        return x
    out = callback(i, x)
    return x if out is None else out
