"""Sampling from any ``score_fn(x, t)`` and SDE.

    result = sample(score_fn, sde, shape, sampler="euler_maruyama", steps=500)
    result.x, result.nfe

Every sampler is a stateless function in the one registry (``SAMPLERS``); it asks the SDE
for what it needs (``sde``, ``reverse``, ``prior_sampling``) and never for its type.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from scorelab.sampling import ode_solvers, sde_solvers  # noqa: F401  (register samplers)
from scorelab.sampling.grids import uniform_grid
from scorelab.sampling.registry import SAMPLERS, check_options, get_sampler, sampler_options


class SampleResult(NamedTuple):
    x: Tensor
    nfe: int


@torch.no_grad()
def sample(score_fn, sde, shape, sampler: str = "euler_maruyama", steps: int = 500,
           generator: torch.Generator | None = None, x_init: Tensor | None = None,
           device=None, eps: float | None = None, callback=None, **options) -> SampleResult:
    """Draw samples by integrating from the prior at T down to ``eps``.

    Args:
        score_fn: callable (x [B,...], t [B]) -> score [B,...].
        sde: a ``scorelab.sde.SDE``.
        shape: shape of the batch to draw, e.g. (64, 1, 28, 28).
        sampler: a registered sampler name.
        steps: number of time steps (not NFE: Heun uses two evaluations a step).
        generator: ``torch.Generator`` for the prior draw and the sampler's noise.
        x_init: start from this prior sample instead of drawing one.
        device: where to sample (default: the generator's, else CPU).
        eps: final time (default: ``sde.sampling_eps``).
        callback: called as callback(step_index, x) after every step (progress bars).
        **options: the sampler's own options (e.g. ``denoise``, ``method``).
    """
    fn = get_sampler(sampler)
    check_options(sampler, options)
    if x_init is not None:
        x = x_init
    else:
        if device is None and generator is not None:
            device = generator.device
        x = sde.prior_sampling(shape, generator=generator, device=device)
    ts = uniform_grid(sde.T, sde.sampling_eps if eps is None else eps, steps, device=x.device)
    x, nfe = fn(score_fn, sde, x, ts, generator=generator, callback=callback, **options)
    return SampleResult(x, nfe)


__all__ = ["sample", "SampleResult", "SAMPLERS", "get_sampler", "sampler_options"]
