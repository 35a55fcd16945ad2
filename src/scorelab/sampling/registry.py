"""The one registry of samplers: name -> function(score_fn, sde, x, ts, *, generator,
callback, **options) -> (x, nfe), plus the time grid each uses by default."""

from __future__ import annotations

import inspect

SAMPLERS: dict = {}
DEFAULT_GRIDS: dict = {}
# Options that every sampler takes through ``sample()`` (they shape the time grid).
COMMON_OPTIONS = ("grid", "rho", "eps")
_ARGS = {"score_fn", "sde", "x", "ts", "generator", "callback"}


def register(name: str, grid: str = "uniform"):
    def wrap(fn):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} registered twice")
        SAMPLERS[name] = fn
        DEFAULT_GRIDS[name] = grid
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


def check_options(name: str, options: dict) -> None:
    allowed = set(sampler_options(name)) | set(COMMON_OPTIONS)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"sampler {name!r} has no option(s) {', '.join(unknown)}; its "
                         f"options are: {', '.join(sampler_options(name) + list(COMMON_OPTIONS))}")
