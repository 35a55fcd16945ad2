"""Few-step samplers of few-step models.

``meanflow`` (Geng et al. 2025, Alg. 2): a two-time model's average velocity u(z, r, t)
(``scorelab.training.meanflow``) jumps along the grid,

    z_{t_{i+1}} = z_{t_i} - (t_i - t_{i+1}) u(z_{t_i}, t_{i+1}, t_i),

one evaluation a step, the last step ending at r = 0, the data itself (u is trained on
r in [0, t]; there is no final denoising step). One step is z_0 = eps - u(eps, 0, T).
"""

from __future__ import annotations

from scorelab.sampling.common import after_step, per_sample_times
from scorelab.sampling.registry import register


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
