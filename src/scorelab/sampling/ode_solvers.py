"""Fixed-step solvers of the probability-flow ODE (Song et al. 2021, Eq. 13):

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t).
"""

from __future__ import annotations

from scorelab.sampling.registry import register

METHODS = ("euler", "heun")


@register("ode")
def probability_flow(score_fn, sde, x, ts, *, generator=None, callback=None,
                     method: str = "heun"):
    """Integrate the probability-flow ODE from t_0 = T to t_n = eps on the grid ``ts``.

    method="euler": x += v(x, t_i) h_i                              (1 NFE / step, order 1)
    method="heun":  x' = x + v(x, t_i) h_i;
                    x += (v(x, t_i) + v(x', t_{i+1})) h_i / 2       (2 NFE / step, order 2)
    """
    if method not in METHODS:
        raise ValueError(f"ode sampler: unknown method {method!r}; known: {', '.join(METHODS)}")
    rsde = sde.reverse(score_fn, probability_flow=True)
    batch = x.shape[0]
    hs = ts[1:] - ts[:-1]
    nfe = 0
    for i in range(len(hs)):
        d = rsde.sde(x, ts[i].expand(batch))[0]
        nfe += 1
        if method == "heun":
            x_pred = x + d * hs[i]
            d = 0.5 * (d + rsde.sde(x_pred, ts[i + 1].expand(batch))[0])
            nfe += 1
        x = x + d * hs[i]
        if callback is not None:
            callback(i, x)
    return x, nfe
