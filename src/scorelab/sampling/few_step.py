"""Few-step samplers of few-step models.

``consistency`` (Song et al. 2023): jumps to the data with the consistency function and
re-noises, once per step (below).

``meanflow`` (Geng et al. 2025, Alg. 2): a two-time model's average velocity u(z, r, t)
(``scorelab.training.meanflow``) jumps along the grid,

    z_{t_{i+1}} = z_{t_i} - (t_i - t_{i+1}) u(z_{t_i}, t_{i+1}, t_i),

one evaluation a step, the last step ending at r = 0, the data itself (u is trained on
r in [0, t]; there is no final denoising step). One step is z_0 = eps - u(eps, 0, T).
"""

from __future__ import annotations

import math

import torch

from scorelab.sampling.common import after_step, per_sample_times, randn_like
from scorelab.sampling.registry import register
from scorelab.util.checks import number, optional


@register("meanflow", grid="uniform", two_time=True)
def meanflow(model, path, x, ts, *, generator=None, callback=None):
    """MeanFlow's jumps on ``ts`` (from T), the last to t = 0; NFE = steps."""
    ts = ts.clone()
    ts[-1] = 0.0
    times = per_sample_times(ts.to(x.dtype), x.shape[0])
    for i in range(len(ts) - 1):
        pred = model(x, times[i], r=times[i + 1])
        x = x - (ts[i] - ts[i + 1]).to(x.dtype) * pred.velocity
        x = after_step(callback, i, x)
    return x, len(ts) - 1


@register("consistency", grid="karras", few_step=True,
          rules={"sigma_max": optional(number(0, lo_open=True))})
def consistency(model, path, x, ts, *, generator=None, callback=None,
                sigma_max: float | None = None):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) on ``ts``: x0 = f(x_T, T);
    then at each later grid time x = alpha x0 + sigma z and x0 = f(x, t), f the model's x0
    prediction (a consistency model's boundary-respecting one, ``models.consistency``).
    The grid's last point is not evaluated (f is the identity there); NFE = steps.

    ``sigma_max``: where the path's noise level sigma / alpha at T is higher (infinite on
    flow paths, ~150 on VP), the first evaluation is at the level ``sigma_max`` instead, from
    x = sigma(t) z, the prior's draw rescaled (EDM's and consistency models' x_T = sigma_max
    z): the highest level consistency training reaches (``loss.sigma_max``). Later grid
    times above it are dropped."""
    if sigma_max is not None:
        alphas, sigmas = path.alpha_sigma(ts.double())
        above = (sigmas > sigma_max * alphas).tolist()
        if above[0]:
            t0 = path.t_from_log_snr(-torch.tensor([math.log(sigma_max)], dtype=torch.float64))
            below = ~torch.tensor(above[1:], device=ts.device)
            ts = torch.cat([t0.to(ts), ts[1:][below]])
            x = x * (path.alpha_sigma(t0)[1] / path.alpha_sigma(
                torch.tensor([float(path.T)], dtype=torch.float64))[1]).to(x)
    times = per_sample_times(ts.to(x.dtype), x.shape[0])
    alphas, sigmas = (v.to(x.dtype) for v in path.alpha_sigma(ts))
    n = len(ts) - 1
    for i in range(n):
        x0 = model(x, times[i]).x0
        x = x0 if i == n - 1 else alphas[i + 1] * x0 + sigmas[i + 1] * randn_like(x0, generator)
        x = after_step(callback, i, x)
    return x, n
