"""Time grids T = t_0 > t_1 > ... > t_n = eps, as pure functions of the SDE.

* uniform:   equal steps in t (Score SDE).
* quadratic: t = eps + (T - eps) u^2 on a uniform u grid: denser near the data (DDIM's
             quadratic schedule).
* karras:    EDM's rho-spaced noise levels (Karras et al. 2022, Eq. 5) in the VE-equivalent
             noise level sigma/alpha, sigma_i = (smax^(1/rho) + i/n (smin^(1/rho) -
             smax^(1/rho)))^rho, mapped back to t through the SDE's log-SNR.
* logsnr:    equal steps in lambda = log(alpha / sigma) (DPM-Solver's recommended grid).

Grids are built once per sampling call in float64 and handed to the sampler as a tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

GRIDS = ("uniform", "quadratic", "karras", "logsnr")


def make_grid(name: str, sde, steps: int, eps: float, rho: float = 7.0,
              device=None) -> Tensor:
    if steps < 1:
        raise ValueError(f"sampling needs steps >= 1, got {steps}")
    T = float(sde.T)
    if not 0 <= eps < T:
        raise ValueError(f"sampling eps must be in [0, T={T}), got {eps}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if name == "uniform":
        ts = eps + (T - eps) * u
    elif name == "quadratic":
        ts = eps + (T - eps) * u * u
    elif name in ("karras", "logsnr"):
        ends = torch.tensor([T, eps], dtype=torch.float64)
        lam_T, lam_eps = sde.log_snr(ends).tolist()
        if name == "logsnr":
            lam = lam_T + (lam_eps - lam_T) * (1 - u)
        else:
            smax, smin = torch.exp(-torch.tensor([lam_T, lam_eps], dtype=torch.float64))
            sig = (smax ** (1 / rho) + (1 - u) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
            lam = -torch.log(sig)
        ts = sde.t_from_log_snr(lam)
        ts[0], ts[-1] = T, eps            # exact end points despite the bisection
    else:
        raise ValueError(f"unknown time grid {name!r}; known grids: {', '.join(GRIDS)}")
    return ts.to(device=device, dtype=torch.float32)
