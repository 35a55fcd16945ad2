"""Sampling from any model prediction (or ``score_fn(x, t)``) and SDE or path.

    result = sample(model, path, shape, sampler="dpm_solver", steps=20)
    result.x, result.nfe

``model(x, t)`` returns a ``scorelab.models.prediction.Prediction`` (``ScoreModel.prediction_fn``,
``GaussianMixture.prediction_fn``) or a plain score, which is wrapped. Every sampler is a
stateless function in the one registry (``SAMPLERS``) of (model, path, x, ts); it reads the
prediction as x0, eps, score or velocity and asks the SDE / path for what it needs
(alpha_sigma, derivatives, log_snr and its inverse, drift_diffusion, discretize,
prior_sampling), never for its type. Time grids are separate pure functions (``grids.make_grid``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from scorelab.sampling import ddim, dpm_solver, edm, few_step, ode_solvers, pc, unipc  # noqa: F401
from scorelab.sampling.grids import GRIDS, make_grid
from scorelab.models.prediction import Prediction, as_prediction_fn
from scorelab.sampling.common import TooFewSteps, reporting_evaluations
from scorelab.sampling.registry import (COMMON_OPTIONS, DEFAULT_GRIDS, DEFAULT_SAMPLER, SAMPLERS,
                                        TO_ZERO, check_options, check_path, get_sampler,
                                        sampler_options)


class SampleResult(NamedTuple):
    x: Tensor
    nfe: int


@torch.no_grad()
def sample(model, path, shape, sampler: str = DEFAULT_SAMPLER["name"],
           steps: int = DEFAULT_SAMPLER["steps"],
           generator: torch.Generator | None = None, x_init: Tensor | None = None,
           device=None, grid: str | None = None, rho: float = 7.0, eps: float | None = None,
           shift: float = 1.0, final: str = "eps", callback=None, **options) -> SampleResult:
    """Draw samples by integrating from the prior at T down to ``eps``.

    Args:
        model: callable (x [B,...], t [B]) -> ``Prediction`` or score [B,...].
        path: a ``scorelab.paths`` forward path (an SDE or an interpolant).
        shape: shape of the batch to draw, e.g. (64, 1, 28, 28).
        sampler: a registered sampler name (``SAMPLERS``; default ``DEFAULT_SAMPLER``'s).
        steps: number of grid steps (NFE per step depends on the sampler: see ``nfe``).
        generator: ``torch.Generator`` for the prior draw and the sampler's noise.
        x_init: start from this prior sample instead of drawing one.
        device: where to sample (default: the generator's, else CPU).
        grid: time grid, one of ``GRIDS`` (default: the sampler's own) or a grid file.
        rho: exponent of the karras grid.
        eps: final time (default: ``path.sampling_eps``).
        shift: SD3's time shift of the grid (1: none; ``grids``).
        final: "eps" (end at eps) or "zero" (a last step to t = 0 returning the x0
            prediction; samplers registered ``to_zero``).
        callback: called as callback(step_index, x) after every step (progress bars); a
            tensor it returns replaces x (projections, ``scorelab.guidance.controllable``).
            One with an ``evaluated()`` method is also told of every model evaluation
            (``scorelab.util.progress.SamplingProgress`` counts NFE).
        **options: the sampler's own options (``sampler_options(name)``).

    Option names and values are checked (``check_options``) before anything is drawn.
    """
    fn, model, x, ts = prepare(model, path, shape, sampler, steps, generator, x_init, device,
                               grid, rho, eps, options, callback, shift, final)
    x, nfe = fn(model, path, x, ts, generator=generator, callback=callback, **options)
    return SampleResult(x, nfe)


def prepare(model, path, shape, sampler: str, steps: int, generator=None, x_init=None,
            device=None, grid=None, rho: float = 7.0, eps=None, options: dict | None = None,
            callback=None, shift: float = 1.0, final: str = "eps"):
    """What every sampling call does before its first step: check the options, draw the
    prior (or take ``x_init``), make the grid, check the path, wrap the model (reporting
    each evaluation to ``callback``, see ``sample``). Returns (sampler function,
    ``model(x, t) -> Prediction``, x_T, grid)."""
    options = options or {}
    fn = get_sampler(sampler)
    check_options(sampler, {"steps": steps, "grid": grid, "rho": rho, "eps": eps,
                            "shift": shift, "final": final, **options})
    if x_init is not None:
        x = x_init
    else:
        if device is None and generator is not None:
            device = generator.device
        x = path.prior_sampling(shape, generator=generator, device=device)
    ts = checked_grid(sampler, path, steps, options, grid, rho, eps, x.device, shift, final)
    return fn, reporting_evaluations(as_prediction_fn(model, path), callback), x, ts


def time_grid(sampler: str, path, steps: int, grid: str | None = None, rho: float = 7.0,
              eps: float | None = None, device=None, shift: float = 1.0,
              final: str = "eps") -> Tensor:
    """The time grid ``sample()`` uses: ``grid`` or the sampler's own, from T to ``eps``
    (default ``path.sampling_eps``) or to 0 (``final="zero"``)."""
    return make_grid(grid or DEFAULT_GRIDS[sampler], path, steps,
                     path.sampling_eps if eps is None else eps, rho=rho, device=device,
                     shift=shift, final=final)


def checked_grid(sampler: str, path, steps: int, options: dict, grid=None, rho: float = 7.0,
                 eps=None, device=None, shift: float = 1.0, final: str = "eps") -> Tensor:
    """``time_grid``, after ``check_path`` on it; a step count too small for a fixed-step
    sampler (``TooFewSteps``) is refused with the fewest sane count of the same grid."""
    ts = time_grid(sampler, path, steps, grid, rho, eps, device, shift, final)
    if float(ts[-1]) == 0 and not TO_ZERO[sampler]:
        raise ValueError(f"sampler {sampler!r} cannot step to t = 0 (sigma = 0), where this "
                         f"grid ends; samplers that can: "
                         f"{', '.join(k for k, v in TO_ZERO.items() if v)}")
    try:
        check_path(sampler, options, path, ts)
    except TooFewSteps as e:
        for more in range(steps + 1, 4 * steps + 100):
            try:
                check_path(sampler, options, path,
                           time_grid(sampler, path, more, grid, rho, eps, device, shift, final))
            except ValueError:      # still too few, or a grid file without this count
                continue
            raise TooFewSteps(f"{e}; use sampler.steps>={more} on this grid") from None
        raise
    return ts


def check_sampler(path, name: str, steps: int, grid: str | None = None, rho: float = 7.0,
                  eps: float | None = None, shift: float = 1.0, final: str = "eps",
                  **options) -> None:
    """Everything ``sample()`` checks before its first evaluation -- option names and values,
    the grid (a grid file's content), and whether the sampler can run on this SDE / path --
    without a model (start-up)."""
    check_options(name, {"steps": steps, "grid": grid, "rho": rho, "eps": eps,
                         "shift": shift, "final": final, **options})
    checked_grid(name, path, steps, options, grid, rho, eps, None, shift, final)


def nfe_of(path, sampler: str, steps: int, **options) -> int:
    """The NFE per sample of a sampler setting on ``path`` (fixed-step samplers: it does not
    depend on the model), counted on a model-free prediction (x0_hat = 0, one sample)."""
    x = path.prior_sampling((1, 1), generator=torch.Generator().manual_seed(0))
    return sample(lambda y, t: Prediction.from_x0(path, y, t, torch.zeros_like(y)), path, None,
                  sampler, steps, x_init=x, **options).nfe


def steps_for_nfe(path, sampler: str, budget: int, **options) -> int | None:
    """The most steps whose NFE is exactly ``budget`` (e.g. EDM's Heun: 2 a step, 1 for a
    step from alpha = 0 or to t = 0); None if no step count hits it (a grid file: only its
    step counts are tried)."""
    best = None
    for steps in range(1, budget + 1):
        try:
            nfe = nfe_of(path, sampler, steps, **options)
        except ValueError:          # e.g. a grid file without this step count
            continue
        if nfe == budget:
            best = steps
        elif nfe > budget:
            break
    return best


__all__ = ["sample", "prepare", "nfe_of", "steps_for_nfe", "SampleResult", "SAMPLERS",
           "DEFAULT_SAMPLER", "GRIDS",
           "COMMON_OPTIONS", "get_sampler", "sampler_options", "check_options", "check_path",
           "check_sampler", "make_grid", "time_grid"]
