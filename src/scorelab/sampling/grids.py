"""Time grids from T down to the sampling epsilon, as pure functions."""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_grid(T: float, eps: float, steps: int, device=None) -> Tensor:
    """steps + 1 equally spaced times T = t_0 > ... > t_steps = eps (Score SDE's grid)."""
    if steps < 1:
        raise ValueError(f"sampling needs steps >= 1, got {steps}")
    return torch.linspace(T, eps, steps + 1, device=device)
