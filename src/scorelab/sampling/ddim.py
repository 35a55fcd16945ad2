"""DDIM (Song, Meng & Ermon 2021, Eq. 12) in alpha/sigma form, so it runs on every SDE.

From t to s < t on the grid, with x0_hat and eps_hat the model's prediction at (x, t):

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,
    c   = eta * (sigma_s / sigma_t) * sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2).

On VP (alpha^2 + sigma^2 = 1) this is DDIM's sigma_t(eta); eta = 0 is deterministic (the
probability-flow ODE's first-order exponential integrator), eta = 1 the ancestral sampler.
The step needs alpha_t only through alpha_t / alpha_s, so it starts from alpha(T) = 0 too;
a step to t = 0 (sigma_s = 0, ``final="zero"``) gives alpha_s x0_hat.
"""

from __future__ import annotations

import torch

from scorelab.util.checks import number
from scorelab.sampling.common import after_step, per_sample_times, randn_like
from scorelab.sampling.registry import register
from scorelab.paths.sde import transition_kernel


@register("ddim", grid="uniform", rules={"eta": number(0)}, to_zero=True)
def ddim(model, path, x, ts, *, generator=None, callback=None, eta: float = 0.0):
    alphas, sigmas = path.alpha_sigma(ts)
    times = per_sample_times(ts, x.shape[0])
    for i in range(len(ts) - 1):
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        pred = model(x, times[i])
        c = eta * (s_s / s_t) * torch.sqrt(transition_kernel(a_s, s_s, a_t, s_t)[1])
        x = a_s * pred.x0 + torch.sqrt((s_s * s_s - c * c).clamp(min=0)) * pred.eps
        if eta > 0:
            x = x + c * randn_like(x, generator)
        x = after_step(callback, i, x)
    return x, len(ts) - 1
