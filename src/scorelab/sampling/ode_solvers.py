"""Solvers of the probability-flow ODE (Song et al. 2021, Eq. 13):

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t),   integrated from T down to eps.

method="rk45" (default): adaptive Dormand–Prince through scipy's ``solve_ivp`` (``rtol``,
``atol``; Score SDE's ODE sampler); "euler" (1 NFE / step, order 1) and "heun"
(2 NFE / step, order 2) on the time grid.
"""

from __future__ import annotations

import numpy as np
import torch

from scorelab.sampling.registry import register

METHODS = ("rk45", "euler", "heun")


def probability_flow_drift(sde, score_fn):
    rsde = sde.reverse(score_fn, probability_flow=True)
    return lambda x, t: rsde.sde(x, t)[0]


def solve_ivp_torch(fn, x, t0: float, t1: float, rtol: float, atol: float, method="RK45"):
    """Integrate dx/dt = fn(x, t) with scipy from t0 to t1; returns (x(t1), nfe)."""
    from scipy.integrate import solve_ivp

    shape, device, dtype = x.shape, x.device, x.dtype
    batch = shape[0]

    def rhs(t, y):
        xt = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
        tt = torch.full((batch,), t, device=device, dtype=dtype)
        return fn(xt, tt).reshape(-1).double().cpu().numpy()

    sol = solve_ivp(rhs, (t0, t1), x.reshape(-1).double().cpu().numpy(), rtol=rtol, atol=atol,
                    method=method)
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE solver failed: {sol.message}")
    return torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).to(device, dtype).reshape(shape), sol.nfev


@register("ode", grid="uniform")
def probability_flow(score_fn, sde, x, ts, *, generator=None, callback=None,
                     method: str = "rk45", rtol: float = 1e-5, atol: float = 1e-5):
    """Integrate the probability-flow ODE on ``ts`` (fixed step) or adaptively (rk45,
    which uses only the grid's end points)."""
    if method not in METHODS:
        raise ValueError(f"ode sampler: unknown method {method!r}; known: {', '.join(METHODS)}")
    drift = probability_flow_drift(sde, score_fn)
    if method == "rk45":
        x, nfe = solve_ivp_torch(drift, x, float(ts[0]), float(ts[-1]), rtol, atol)
        if callback is not None:
            callback(len(ts) - 2, x)
        return x, nfe
    batch = x.shape[0]
    times = ts[:, None].expand(len(ts), batch)
    hs = ts[1:] - ts[:-1]
    nfe = 0
    for i in range(len(hs)):
        d = drift(x, times[i])
        nfe += 1
        if method == "heun":
            x_pred = x + d * hs[i]
            d = 0.5 * (d + drift(x_pred, times[i + 1]))
            nfe += 1
        x = x + d * hs[i]
        if callback is not None:
            callback(i, x)
    return x, nfe
