"""Time grids optimised for one model and one NFE budget: direct minimisation of the
sampler's error against a fine-step reference solution from the same starts (the
"optimised grid" of ``scripts/optimize_grid.py``; cf. Align Your Steps, Sabour et al. 2024,
which optimises a KL bound instead, and DMN / GITS-style searches on the solution error).

The objective is the RMS distance E(ts) = sqrt(mean (x_ts(x_T) - x_ref(x_T))^2) over a few
hundred starts x_T, with x_ts the sampler run on the grid ts and x_ref a fine solution (e.g.
UniPC-3 with 100 steps). The grid's interior points are searched coordinate by coordinate:
each point t_i moves by +-s times half the gap to its neighbours, the best move is kept, and
s halves after a sweep that improved nothing; the end points stay. Every evaluation of E
costs the sampler's NFE on every start, and the sampler's own randomness is not involved
(deterministic samplers only).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from scorelab.sampling.registry import get_sampler


def solution_error(model, path, x_T: Tensor, reference: Tensor, sampler: str, ts: Tensor,
                   options: dict | None = None) -> float:
    """E(ts): the RMS distance of the sampler's result on grid ``ts`` to ``reference``."""
    x, _ = get_sampler(sampler)(model, path, x_T.clone(), ts, **(options or {}))
    return float(((x - reference) ** 2).mean().sqrt())


@torch.no_grad()
def optimise_grid(model, path, x_T: Tensor, reference: Tensor, sampler: str, init: Tensor,
                  options: dict | None = None, sweeps: int = 6, move: float = 0.5,
                  log: Callable[[str], None] | None = None) -> tuple[Tensor, float, float]:
    """Search the interior points of ``init`` (T = t_0 > ... > t_n) for the least
    ``solution_error``; returns (grid, error of init, error of the grid)."""
    ts = init.clone().double()
    best = first = solution_error(model, path, x_T, reference, sampler, ts.float(), options)
    for sweep in range(sweeps):
        improved = False
        for i in range(1, len(ts) - 1):
            half_gap = 0.5 * min(ts[i - 1] - ts[i], ts[i] - ts[i + 1])
            for sign in (1.0, -1.0):
                trial = ts.clone()
                trial[i] = ts[i] + sign * move * half_gap
                error = solution_error(model, path, x_T, reference, sampler, trial.float(),
                                       options)
                if error < best:
                    best, ts, improved = error, trial, True
                    break
        if log is not None:
            log(f"sweep {sweep + 1}: error {best:.5f} (move {move:g})")
        if not improved:
            move *= 0.5
    return ts.float(), first, best
