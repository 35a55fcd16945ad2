"""The one registry of samplers: name -> function(score_fn, sde, x, ts, *, generator,
callback, **options) -> (x, nfe)."""

from __future__ import annotations

import inspect

SAMPLERS: dict = {}


def register(name: str):
    def wrap(fn):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} registered twice")
        SAMPLERS[name] = fn
        return fn
    return wrap


def get_sampler(name: str):
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; known samplers: "
                         f"{', '.join(sorted(SAMPLERS))}") from None


def sampler_options(name: str) -> list[str]:
    """The keyword options a sampler accepts (beyond the common arguments)."""
    common = {"score_fn", "sde", "x", "ts", "generator", "callback"}
    params = inspect.signature(get_sampler(name)).parameters
    return [p for p in params if p not in common]


def check_options(name: str, options: dict) -> None:
    unknown = sorted(set(options) - set(sampler_options(name)))
    if unknown:
        raise ValueError(f"sampler {name!r} has no option(s) {', '.join(unknown)}; its "
                         f"options are: {', '.join(sampler_options(name)) or '(none)'}")
