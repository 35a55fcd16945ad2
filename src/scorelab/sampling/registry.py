"""The one registry of samplers: name -> function(model, path, x, ts, *, generator,
callback, **options) -> (x, nfe), ``model(x, t) -> Prediction`` (``scorelab.models.prediction``),
plus the time grid each uses by default and the allowed values of its options
(``scorelab.util.checks`` rules), checked by ``check_options`` before any sampling: ``sample()``
and the command line's ``sampler_settings`` use the same rules. ``check_path`` asks the
sampler whether it can run on a given SDE / path (e.g. from alpha(T) = 0)."""

from __future__ import annotations

import inspect
from types import MappingProxyType

from scorelab.util.checks import Rule, check_values, integer, number, one_of, optional
from scorelab.sampling.grids import FINALS, GRIDS, is_grid_file

SAMPLERS: dict = {}
DEFAULT_GRIDS: dict = {}
RULES: dict = {}            # name -> {option: Rule}
COMBINED: dict = {}         # name -> check(options with defaults filled in) or None
PATH_CHECKS: dict = {}      # name -> check(options with defaults, path, ts) or None
TO_ZERO: dict = {}          # name -> whether its last step can end at t = 0 (final="zero")
TWO_TIME: set = set()       # samplers that call model(x, t, r=...): a two-time model's jumps
FEW_STEP: set = set()       # samplers made for few-step models (consistency, MeanFlow)
# Options that every sampler takes through ``sample()`` (they shape the time grid).
COMMON_OPTIONS = ("grid", "rho", "eps", "shift", "final")
COMMON_RULES: dict[str, Rule] = {
    "steps": integer(1),
    # None: the sampler's own grid; a file: scripts/optimize_grid.py's output
    "grid": optional(Rule(lambda v: v in GRIDS or is_grid_file(v),
                          f"one of {', '.join(GRIDS)} or a grid file",
                          lambda v: f"unknown time grid {v!r} (and no such grid file); known: "
                                    f"{', '.join(GRIDS)}")),
    "rho": number(0, lo_open=True),
    "eps": optional(number(0)),                         # None: path.sampling_eps
    "shift": number(0, lo_open=True),
    "final": one_of(FINALS, "final"),
}
# The sampler wherever none is named: ``sample()``, ``controlled_sample``,
# ``DiffusionModule.sample`` and a checkpoint whose stored sampler cannot run here. EDM's Heun
# on its Karras grid, 18 steps (2 NFE a step): it runs on every path, alpha(T) = 0 included,
# with no option that depends on the path. Read-only: ``dict(DEFAULT_SAMPLER)`` for a copy.
DEFAULT_SAMPLER = MappingProxyType({"name": "edm", "steps": 18})
_ARGS = {"model", "path", "x", "ts", "generator", "callback"}


def register(name: str, grid: str = "uniform", rules: dict[str, Rule] | None = None,
             combined=None, path_check=None, to_zero: bool = False, two_time: bool = False,
             few_step: bool = False):
    """Register a sampler. ``rules``: allowed values of its own options; ``combined``:
    ``check(options) -> None`` raising ValueError for combinations no single rule sees;
    ``path_check``: ``check(options, path, ts) -> None`` for what the path must allow;
    ``to_zero``: its last step can end at t = 0, where sigma = 0 (``final="zero"``);
    ``two_time``: it needs a two-time model (``model(x, t, r=...)``, MeanFlow's);
    ``few_step``: it is made for a few-step model (a diffusion model's samples from it are
    poor: its x0 prediction is a posterior mean)."""
    def wrap(fn):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} registered twice")
        SAMPLERS[name] = fn
        DEFAULT_GRIDS[name] = grid
        RULES[name] = dict(rules or {})
        COMBINED[name] = combined
        PATH_CHECKS[name] = path_check
        TO_ZERO[name] = to_zero
        if two_time:
            TWO_TIME.add(name)
        if few_step or two_time:
            FEW_STEP.add(name)
        return fn
    return wrap


def get_sampler(name: str):
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; known samplers: "
                         f"{', '.join(sorted(SAMPLERS))}") from None


def sampler_options(name: str) -> list[str]:
    """The sampler's own keyword options (beyond ``steps`` and the COMMON_OPTIONS)."""
    params = inspect.signature(get_sampler(name)).parameters
    return [p for p in params if p not in _ARGS]


def _defaults(name: str) -> dict:
    params = inspect.signature(get_sampler(name)).parameters
    return {p: params[p].default for p in sampler_options(name)}


def check_options(name: str, options: dict) -> None:
    """Check option names and values of sampler ``name`` (``options`` may hold ``steps``
    and the COMMON_OPTIONS too). Raises ValueError naming the option, e.g.
    "sampler.order: must be an integer in [1, 3], got 4"."""
    allowed = set(sampler_options(name)) | set(COMMON_OPTIONS) | {"steps"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"sampler {name!r} has no option(s) {', '.join(unknown)}; its "
                         f"options are: {', '.join(sampler_options(name) + list(COMMON_OPTIONS))}")
    check_values("sampler", options, {**COMMON_RULES, **RULES[name]})
    if options.get("final") == "zero" and not TO_ZERO[name]:
        raise ValueError(f"sampler.final: sampler {name!r} cannot step to t = 0 (sigma = 0); "
                         f"final=zero is for {', '.join(k for k, v in TO_ZERO.items() if v)}")
    if COMBINED[name] is not None:
        COMBINED[name]({**_defaults(name), **options})


def check_path(name: str, options: dict, path, ts) -> None:
    """Raise ValueError if sampler ``name`` with ``options`` cannot run on ``path`` over the
    grid ``ts`` (called by ``sample()`` before the first evaluation, and at start-up)."""
    if PATH_CHECKS[name] is not None:
        own = {k: v for k, v in options.items() if k in set(sampler_options(name))}
        PATH_CHECKS[name]({**_defaults(name), **own}, path, ts)
