"""EDM's stochastic / deterministic Heun sampler (Karras et al. 2022, Alg. 2) for any SDE.

Writing x_t = alpha_t (x0 + s_t z) with the VE-equivalent noise level s_t = sigma_t / alpha_t,
y = x / alpha follows EDM's ODE dy/ds = (y - D(y; s)) / s, with the denoiser
D(y; s) = x0_hat(alpha y, t(s)) from the score by Tweedie. Time t(s) comes from the SDE's
log-SNR (lambda = -log s). Churn (``s_churn`` > 0) adds noise to raise s to s_hat = s (1 + gamma)
before each step, gamma = min(s_churn / steps, sqrt(2) - 1) for s in [s_tmin, s_tmax].
"""

from __future__ import annotations

import math

import torch

from scorelab.checks import number
from scorelab.sampling._util import randn_like, x0_from_score
from scorelab.sampling.registry import register


@register("edm", grid="karras",
          rules={"s_churn": number(0), "s_tmin": number(0), "s_tmax": number(0),
                 "s_noise": number(0)})
def edm_heun(score_fn, sde, x, ts, *, generator=None, callback=None, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0):
    batch = x.shape[0]
    alphas, sigmas = sde.alpha_sigma(ts)
    levels = sigmas / alphas                                # VE-equivalent noise levels
    n = len(ts) - 1
    gamma_max = min(s_churn / n, math.sqrt(2) - 1) if s_churn > 0 else 0.0
    # Churned levels (never above the first level, where the prior lives) and their times.
    gammas = torch.where((levels[:-1] >= s_tmin) & (levels[:-1] <= s_tmax),
                         torch.full_like(levels[:-1], gamma_max), torch.zeros_like(levels[:-1]))
    hat = torch.minimum(levels[:-1] * (1 + gammas), levels[0])
    t_hat = sde.t_from_log_snr(-torch.log(hat.double())).to(ts)
    t_hat[gammas == 0] = ts[:-1][gammas == 0]
    a_hat, s_hat = sde.alpha_sigma(t_hat)
    hat = s_hat / a_hat

    def denoise(y, level, t, alpha):
        xt = alpha * y
        return x0_from_score(score_fn(xt, t.expand(batch)), xt, alpha, level * alpha)

    y = x / alphas[0]
    nfe = 0
    for i in range(n):
        y_hat = y
        if gamma_max > 0:
            y_hat = y + torch.sqrt((hat[i] ** 2 - levels[i] ** 2).clamp(min=0)) * s_noise \
                * randn_like(y, generator)
        d = (y_hat - denoise(y_hat, hat[i], t_hat[i], a_hat[i])) / hat[i]
        y_next = y_hat + (levels[i + 1] - hat[i]) * d
        d2 = (y_next - denoise(y_next, levels[i + 1], ts[i + 1], alphas[i + 1])) / levels[i + 1]
        y = y_hat + (levels[i + 1] - hat[i]) * 0.5 * (d + d2)
        nfe += 2
        if callback is not None:
            callback(i, alphas[i + 1] * y)
    return alphas[-1] * y, nfe
