"""Solvers of the probability-flow ODE (Song et al. 2021, Eq. 13):

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t) = alpha' x0_hat + sigma' eps_hat (the velocity),
integrated from T down to eps; on a flow-matching path this is plain flow-matching sampling.

method="rk45" (default): adaptive Dormand–Prince 5(4) with error control (``rtol``,
``atol``; Score SDE's ODE sampler), by ``solver``:
  * "torchdiffeq" (default): torchdiffeq's ``dopri5`` on the device the batch lives on;
  * "scipy": scipy's ``solve_ivp(method="RK45")`` on the host (the batch is copied there
    and back at every evaluation; the reference implementation).
Both keep the ODE state in float64 and call ``fn`` in the batch's dtype, and both use the
RMS error norm over the whole batch, so they take nearly the same steps.
"euler" (1 NFE / step, order 1) and "heun" (2 NFE / step, order 2) run on the time grid;
Heun's correction only on steps that shrink the noise level sigma / alpha by at most
``max_ratio`` (default 4, as EDM's sampler: ``common.heun_corrections``), the others are
Euler's, so a few-step grid does not multiply the model's error near t = 0 by the level ratio.
(Fixed-step Euler in t stays unstable at few steps where log sigma changes by more than ~2 in
one step, e.g. the VE SDE below ~10 steps: use ddim / dpm_solver / unipc there.)
"""

from __future__ import annotations

import numpy as np
import torch

from scorelab.util.checks import number, one_of
from scorelab.sampling.common import (after_step, check_leftover_noise, heun_corrections,
                                      per_sample_times)
from scorelab.sampling.registry import register

METHODS = ("rk45", "euler", "heun")


def velocity_field(model):
    """The probability-flow ODE's drift f x - g^2 s / 2 = the prediction's velocity
    alpha' x0_hat + sigma' eps_hat (finite at alpha(T) = 0, where f and g are not)."""
    return lambda x, t: model(x, t).velocity


def solve_scipy(fn, x, t0: float, t1: float, rtol: float, atol: float):
    """Integrate dx/dt = fn(x, t) with scipy's RK45 from t0 to t1; returns (x(t1), nfe)."""
    from scipy.integrate import solve_ivp

    shape, device, dtype = x.shape, x.device, x.dtype
    batch = shape[0]

    def rhs(t, y):
        xt = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
        tt = torch.full((batch,), t, device=device, dtype=dtype)
        return fn(xt, tt).reshape(-1).double().cpu().numpy()

    sol = solve_ivp(rhs, (t0, t1), x.reshape(-1).double().cpu().numpy(), rtol=rtol, atol=atol,
                    method="RK45")
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE solver failed: {sol.message}")
    x1 = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).to(device, dtype).reshape(shape)
    return x1, sol.nfev


def solve_torchdiffeq(fn, x, t0: float, t1: float, rtol: float, atol: float):
    """Integrate dx/dt = fn(x, t) with torchdiffeq's dopri5 from t0 to t1 on x's device;
    returns (x(t1), nfe), nfe counted in the wrapped right-hand side."""
    from torchdiffeq import odeint

    shape, dtype, batch = x.shape, x.dtype, x.shape[0]
    nfe = 0

    lo, hi = min(t0, t1), max(t0, t1)

    def rhs(t, y):
        nonlocal nfe
        nfe += 1
        # The initial-step probe may look past the interval (scipy clips it likewise).
        tt = t.clamp(lo, hi).to(dtype).expand(batch)
        return fn(y.to(dtype).reshape(shape), tt).reshape(batch, -1).to(y.dtype)

    times = torch.tensor([t0, t1], dtype=torch.float64, device=x.device)
    with torch.no_grad():
        # step_t: steps land on t1 instead of stepping past it (no evaluation beyond the
        # end, where e.g. sigma(t < 0) is undefined).
        y = odeint(rhs, x.reshape(batch, -1).double(), times, rtol=rtol, atol=atol,
                   method="dopri5", options={"step_t": times[1:]})[-1]
    if not torch.isfinite(y).all():
        raise RuntimeError("probability-flow ODE solver failed: non-finite state")
    return y.to(dtype).reshape(shape), nfe


SOLVERS = {"torchdiffeq": solve_torchdiffeq, "scipy": solve_scipy}


def solve_ode(fn, x, t0: float, t1: float, rtol: float, atol: float,
              solver: str = "torchdiffeq"):
    """Adaptive Dormand–Prince from t0 to t1 with the named solver (``SOLVERS``)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; known: {', '.join(SOLVERS)}")
    return SOLVERS[solver](fn, x, float(t0), float(t1), rtol, atol)


def _check_ode_path(options, path, ts):
    """Fixed steps (euler, heun) that do not leave the prior's noise in the sample
    (``leftover_noise``; on the uniform grid VP and sub-VP need 3 steps, VE 6, cosine 2, the
    linear path 1); rk45 never on a grid ending at t = 0, where it would evaluate the model
    at sigma = 0."""
    if options["method"] == "rk45" and float(ts[-1]) == 0:
        raise ValueError("sampler ode (method=rk45) evaluates the model at its end point, and "
                         "a grid that ends at t = 0 has sigma = 0 there; use method=euler or "
                         "heun (their last step does not evaluate it)")
    if options["method"] != "rk45":
        check_leftover_noise(f"sampler ode (method={options['method']})", path, ts)


@register("ode", grid="uniform", path_check=_check_ode_path, to_zero=True,
          rules={"method": one_of(METHODS, "method"), "solver": one_of(SOLVERS, "solver"),
                 "rtol": number(0, lo_open=True), "atol": number(0, lo_open=True),
                 "max_ratio": number(1)})
def probability_flow(model, path, x, ts, *, generator=None, callback=None,
                     method: str = "rk45", rtol: float = 1e-5, atol: float = 1e-5,
                     solver: str = "torchdiffeq", max_ratio: float = 4.0):
    """Integrate the probability-flow ODE on ``ts`` (fixed step) or adaptively (rk45,
    which uses only the grid's end points; ``solver`` torchdiffeq | scipy)."""
    drift = velocity_field(model)
    if method == "rk45":
        # Adaptive over [T, eps]; a callback that replaces the state after every grid step
        # (controllable generation) gets one adaptive solve per grid interval instead.
        ends = list(range(1, len(ts))) if getattr(callback, "replaces_state", False) \
            else [len(ts) - 1]
        nfe, start = 0, 0
        for end in ends:
            x, n = solve_ode(drift, x, ts[start], ts[end], rtol, atol, solver)
            nfe, start = nfe + n, end
            x = after_step(callback, end - 1, x)
        return x, nfe
    times = per_sample_times(ts, x.shape[0])
    hs = ts[1:] - ts[:-1]
    alphas, sigmas = path.alpha_sigma(ts)
    levels = sigmas / alphas
    heun = heun_corrections(levels[:-1], levels[1:], max_ratio) if method == "heun" else []
    nfe = 0
    for i in range(len(hs)):
        d = drift(x, times[i])
        nfe += 1
        if method == "heun" and heun[i]:
            x_pred = x + d * hs[i]
            d = 0.5 * (d + drift(x_pred, times[i + 1]))
            nfe += 1
        x = x + d * hs[i]
        x = after_step(callback, i, x)
    return x, nfe
