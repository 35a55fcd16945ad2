"""Time grids T = t_0 > t_1 > ... > t_n = eps, as pure functions of the SDE.

* uniform:   equal steps in t (Score SDE).
* quadratic: t = eps + (T - eps) u^2 on a uniform u grid: denser near the data (DDIM's
             quadratic schedule).
* karras:    EDM's rho-spaced noise levels (Karras et al. 2022, Eq. 5) in the VE-equivalent
             noise level sigma/alpha, sigma_i = (smax^(1/rho) + i/n (smin^(1/rho) -
             smax^(1/rho)))^rho, mapped back to t through the SDE's log-SNR.
* logsnr:    equal steps in lambda = log(alpha / sigma) (DPM-Solver's recommended grid).
* scheduler: the timesteps of a pretrained model's own scheduler loop, ending where its last
             step ends (usually t = 0, clean data): ``path.scheduler_grid(steps)`` of the
             discrete-schedule paths (``scorelab.paths.discrete``; ``model=diffusers``).
             ``shift`` and ``final`` do not apply: the scheduler's own are used.
* a file:    a grid written by ``scripts/optimize_grid.py`` (``load_grid_file``): JSON
             ``{"grids": {"<steps>": [t_0, ..., t_steps]}, ...}``, one grid per step count.

Two options reshape the rule-made grids:
* shift s (SD3, Esser et al. 2024, Eq. 23; the flow models' "flow_shift"): each interior
  point moves to t' = T s u / (1 + (s - 1) u), u = t / T -- s > 1 spends more steps at
  high noise. The end points T and eps stay.
* final: "eps" (the grid ends at eps) or "zero": the last point is t = 0, where sigma = 0,
  and the last step returns the model's x0 prediction (diffusers' final_sigmas_type="zero").
  Uniform and quadratic grids then run from T to 0; karras and logsnr, which cannot space
  to an infinite log-SNR, space steps - 1 intervals from T to eps and append 0.

On a path with alpha(T) = 0 (lambda(T) = -inf) the karras and logsnr grids start at T and
space the other points by their rule from t_1 = T - (T - eps) / steps, the uniform grid's
first point -- the mirror image of final="zero".

Grids are built once per sampling call in float64 and handed to the sampler as a tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

GRIDS = ("uniform", "quadratic", "karras", "logsnr", "scheduler")
FINALS = ("eps", "zero")


def is_grid_file(name) -> bool:
    """Whether a ``grid`` value names a grid file rather than a rule of ``GRIDS``."""
    return isinstance(name, str) and name not in GRIDS and Path(name).is_file()


def make_grid(name: str, path, steps: int, eps: float, rho: float = 7.0,
              device=None, shift: float = 1.0, final: str = "eps") -> Tensor:
    """The grid T = t_0 > ... > t_steps by the rule (or file) ``name``; see the module."""
    if steps < 1:
        raise ValueError(f"sampling needs steps >= 1, got {steps}")
    if is_grid_file(name):
        return load_grid_file(name, path, steps).to(device=device, dtype=torch.float32)
    if name == "scheduler":
        if not hasattr(path, "scheduler_grid"):
            raise ValueError("grid=scheduler: this model has no scheduler of its own (a "
                             "pretrained one through model=diffusers has); use "
                             + ", ".join(g for g in GRIDS if g != "scheduler"))
        return path.scheduler_grid(steps).to(device=device, dtype=torch.float32)
    if final not in FINALS:
        raise ValueError(f"unknown final {final!r}; known: {', '.join(FINALS)}")
    if final == "zero":
        if steps == 1:
            ts = torch.tensor([float(path.T), 0.0], dtype=torch.float64)
        elif name in ("uniform", "quadratic"):
            ts = make_grid(name, path, steps, 0.0, rho, None, shift).double()
        else:
            ts = torch.cat([make_grid(name, path, steps - 1, eps, rho, None, shift).double(),
                            torch.zeros(1, dtype=torch.float64)])
        return ts.to(device=device, dtype=torch.float32)
    ts = _rule_grid(name, path, steps, eps, rho)
    if shift != 1.0:
        T = float(path.T)
        u = ts[1:-1] / T
        ts[1:-1] = T * shift * u / (1 + (shift - 1) * u)
    return ts.to(device=device, dtype=torch.float32)


def _rule_grid(name: str, path, steps: int, eps: float, rho: float) -> Tensor:
    T = float(path.T)
    if not 0 <= eps < T:
        raise ValueError(f"sampling eps must be in [0, T={T}), got {eps}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if name == "uniform":
        ts = eps + (T - eps) * u
    elif name == "quadratic":
        ts = eps + (T - eps) * u * u
    elif name in ("karras", "logsnr"):
        ends = torch.tensor([T, eps], dtype=torch.float64)
        lam_T, lam_eps = path.log_snr(ends).tolist()
        if lam_T == float("-inf"):
            # alpha(T) = 0: no finite level to space from. t_0 = T, then the rule from the
            # uniform grid's first point t_1 = T - (T - eps) / steps on.
            if steps == 1:
                return torch.tensor([T, eps], dtype=torch.float64)
            t1 = T - (T - eps) / steps
            rest = _rule_grid(name, _Truncated(path, t1), steps - 1, eps, rho)
            return torch.cat([torch.tensor([T], dtype=torch.float64), rest])
        if name == "logsnr":
            lam = lam_T + (lam_eps - lam_T) * (1 - u)
        else:
            smax, smin = torch.exp(-torch.tensor([lam_T, lam_eps], dtype=torch.float64))
            sig = (smax ** (1 / rho) + (1 - u) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
            lam = -torch.log(sig)
        ts = path.t_from_log_snr(lam)
        ts[0], ts[-1] = T, eps            # exact end points despite the bisection
    else:
        raise ValueError(f"unknown time grid {name!r}; known grids: {', '.join(GRIDS)} "
                         f"or a grid file")
    return ts


def load_grid_file(file, path, steps: int) -> Tensor:
    """The ``steps``-step grid of a grid file (float64), checked: steps + 1 times, strictly
    decreasing from T (where the prior is drawn) to an end in [0, T)."""
    try:
        grids = json.loads(Path(file).read_text())["grids"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"grid file {file}: not a grid file ({e})") from None
    if str(steps) not in grids:
        raise ValueError(f"grid file {file} has no {steps}-step grid; it has step counts "
                         f"{', '.join(sorted(grids, key=int))}")
    ts = torch.tensor(grids[str(steps)], dtype=torch.float64)
    if ts.dim() != 1 or len(ts) != steps + 1 or not bool((ts[1:] < ts[:-1]).all()) \
            or ts[-1] < 0 or abs(float(ts[0]) - float(path.T)) > 1e-6:
        raise ValueError(f"grid file {file}: the {steps}-step grid must be {steps + 1} "
                         f"strictly decreasing times from T={float(path.T)} to >= 0")
    return ts


def save_grid_file(file, grids: dict[int, list[float]], **about) -> None:
    """Write grids {steps: [t_0, ..., t_steps]} (and what they were made for) as a grid file."""
    record = {**about, "grids": {str(k): [float(t) for t in v] for k, v in sorted(grids.items())}}
    Path(file).write_text(json.dumps(record, indent=1) + "\n")


class _Truncated:
    """The same SDE / path seen on [0, T'] (a grid's end point below T)."""

    def __init__(self, path, T: float):
        self._sde, self.T = path, T

    def __getattr__(self, name):
        return getattr(self._sde, name)
