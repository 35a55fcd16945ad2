"""Value rules for options, stated once beside the code that owns the options.

A registry (the samplers), a constructor (data modules, metric callbacks) or a command
checks the values it is given with these rules when it is configured, so a bad value stops
a run at start-up with one line naming the key, e.g.

    sampler.order: must be an integer in [1, 3], got 4

instead of deep inside the work. Rules are plain Python (no torch, no Hydra).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Callable


class Rule:
    """A predicate on one value and what it expects, for the error message."""

    def __init__(self, ok: Callable[[Any], bool], expects: str,
                 problem: Callable[[Any], str] | None = None):
        self.ok, self.expects, self._problem = ok, expects, problem

    def problem(self, value) -> str | None:
        """None if ``value`` is allowed, else the reason."""
        try:
            fine = bool(self.ok(value))
        except (TypeError, ValueError):
            fine = False
        if fine:
            return None
        return self._problem(value) if self._problem else f"must be {self.expects}, got {value!r}"


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and not math.isnan(v)


def one_of(choices, what: str = "value") -> Rule:
    """The value is one of ``choices`` (message: "unknown <what> 'x'; known: a, b")."""
    choices = tuple(choices)
    return Rule(lambda v: v in choices, f"one of {', '.join(map(str, choices))}",
                lambda v: f"unknown {what} {v!r}; known: {', '.join(map(str, choices))}")


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    """An integer in [lo, hi] (either end may be open-ended: None)."""
    if hi is None:
        text = "an integer" + (f" >= {lo}" if lo is not None else "")
    else:
        text = f"an integer in [{lo}, {hi}]"
    return Rule(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
                text)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Rule:
    """A real number (not NaN) between lo and hi; ``*_open`` excludes the end."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    if lo is not None and hi is not None:
        text = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    else:
        text = "a number" + (f" {parts[0]}" if parts else "")

    def ok(v):
        return (_is_number(v)
                and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))
    return Rule(ok, text)


def positive() -> Rule:
    return number(0, lo_open=True)


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


def optional(rule: Rule) -> Rule:
    """``rule``, or None (meaning "the default")."""
    return Rule(lambda v: v is None or rule.problem(v) is None, f"{rule.expects} or null",
                lambda v: rule.problem(v))


def check_value(key: str, value, rule: Rule) -> None:
    """Raise ``ValueError("<key>: <problem>")`` if ``value`` breaks ``rule``."""
    problem = rule.problem(value)
    if problem is not None:
        raise ValueError(f"{key}: {problem}")


def check_values(prefix: str, values: dict, rules: dict[str, Rule]) -> None:
    """``check_value`` for every key of ``values`` that has a rule (key = prefix.name)."""
    for name, value in values.items():
        if name in rules:
            check_value(f"{prefix}.{name}" if prefix else name, value, rules[name])
