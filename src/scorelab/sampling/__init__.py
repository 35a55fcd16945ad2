"""Sampling from any ``score_fn(x, t)`` and SDE.

    result = sample(score_fn, sde, shape, sampler="dpm_solver", steps=20)
    result.x, result.nfe

Every sampler is a stateless function in the one registry (``SAMPLERS``); it asks the SDE
for what it needs (alpha_sigma, log_snr and its inverse, sde, discretize, reverse,
prior_sampling) and never for its type. Time grids are separate pure functions
(``grids.make_grid``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from scorelab.sampling import ddim, dpm_solver, edm, ode_solvers, pc  # noqa: F401  (register)
from scorelab.sampling.grids import GRIDS, make_grid
from scorelab.sampling.registry import (COMMON_OPTIONS, DEFAULT_GRIDS, SAMPLERS, check_options,
                                        get_sampler, sampler_options)


class SampleResult(NamedTuple):
    x: Tensor
    nfe: int


@torch.no_grad()
def sample(score_fn, sde, shape, sampler: str = "pc", steps: int = 500,
           generator: torch.Generator | None = None, x_init: Tensor | None = None,
           device=None, grid: str | None = None, rho: float = 7.0, eps: float | None = None,
           callback=None, **options) -> SampleResult:
    """Draw samples by integrating from the prior at T down to ``eps``.

    Args:
        score_fn: callable (x [B,...], t [B]) -> score [B,...].
        sde: a ``scorelab.sde.SDE``.
        shape: shape of the batch to draw, e.g. (64, 1, 28, 28).
        sampler: a registered sampler name (``SAMPLERS``).
        steps: number of grid steps (NFE per step depends on the sampler: see ``nfe``).
        generator: ``torch.Generator`` for the prior draw and the sampler's noise.
        x_init: start from this prior sample instead of drawing one.
        device: where to sample (default: the generator's, else CPU).
        grid: time grid, one of ``GRIDS`` (default: the sampler's own).
        rho: exponent of the karras grid.
        eps: final time (default: ``sde.sampling_eps``).
        callback: called as callback(step_index, x) after every step (progress bars).
        **options: the sampler's own options (``sampler_options(name)``).

    Option names and values are checked (``check_options``) before anything is drawn.
    """
    fn = get_sampler(sampler)
    check_options(sampler, {"steps": steps, "grid": grid, "rho": rho, "eps": eps, **options})
    if x_init is not None:
        x = x_init
    else:
        if device is None and generator is not None:
            device = generator.device
        x = sde.prior_sampling(shape, generator=generator, device=device)
    ts = make_grid(grid or DEFAULT_GRIDS[sampler], sde, steps,
                   sde.sampling_eps if eps is None else eps, rho=rho, device=x.device)
    x, nfe = fn(score_fn, sde, x, ts, generator=generator, callback=callback, **options)
    return SampleResult(x, nfe)


__all__ = ["sample", "SampleResult", "SAMPLERS", "GRIDS", "COMMON_OPTIONS", "get_sampler",
           "sampler_options", "check_options", "make_grid"]
