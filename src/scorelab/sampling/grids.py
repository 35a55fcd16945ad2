"""Time grids T = t_0 > t_1 > ... > t_n = eps, as pure functions of the SDE.

* uniform:   equal steps in t (Score SDE).
* quadratic: t = eps + (T - eps) u^2 on a uniform u grid: denser near the data (DDIM's
             quadratic schedule).
* karras:    EDM's rho-spaced noise levels (Karras et al. 2022, Eq. 5) in the VE-equivalent
             noise level sigma/alpha, sigma_i = (smax^(1/rho) + i/n (smin^(1/rho) -
             smax^(1/rho)))^rho, mapped back to t through the SDE's log-SNR.
* logsnr:    equal steps in lambda = log(alpha / sigma) (DPM-Solver's recommended grid).

On a path with alpha(T) = 0 (lambda(T) = -inf) the karras and logsnr grids start at T and
space the other points by their rule from t_1 = T - (T - eps) / steps, the uniform grid's
first point.

Grids are built once per sampling call in float64 and handed to the sampler as a tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

GRIDS = ("uniform", "quadratic", "karras", "logsnr")


def make_grid(name: str, path, steps: int, eps: float, rho: float = 7.0,
              device=None) -> Tensor:
    if steps < 1:
        raise ValueError(f"sampling needs steps >= 1, got {steps}")
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
                return torch.tensor([T, eps], device=device, dtype=torch.float32)
            t1 = T - (T - eps) / steps
            rest = make_grid(name, _Truncated(path, t1), steps - 1, eps, rho, None).double()
            return torch.cat([torch.tensor([T], dtype=torch.float64), rest]).to(
                device=device, dtype=torch.float32)
        if name == "logsnr":
            lam = lam_T + (lam_eps - lam_T) * (1 - u)
        else:
            smax, smin = torch.exp(-torch.tensor([lam_T, lam_eps], dtype=torch.float64))
            sig = (smax ** (1 / rho) + (1 - u) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
            lam = -torch.log(sig)
        ts = path.t_from_log_snr(lam)
        ts[0], ts[-1] = T, eps            # exact end points despite the bisection
    else:
        raise ValueError(f"unknown time grid {name!r}; known grids: {', '.join(GRIDS)}")
    return ts.to(device=device, dtype=torch.float32)


class _Truncated:
    """The same SDE / path seen on [0, T'] (a grid's end point below T)."""

    def __init__(self, path, T: float):
        self._sde, self.T = path, T

    def __getattr__(self, name):
        return getattr(self._sde, name)
