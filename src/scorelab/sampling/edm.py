"""EDM's stochastic / deterministic Heun sampler (Karras et al. 2022, Alg. 2) for any SDE.

Writing x_t = alpha_t (x0 + s_t z) with the VE-equivalent noise level s_t = sigma_t / alpha_t,
y = x / alpha follows EDM's ODE dy/ds = (y - D(y; s)) / s, with the denoiser
D(y; s) = x0_hat(alpha y, t(s)), the model's prediction. Time t(s) comes from the SDE's
log-SNR (lambda = -log s). Churn (``s_churn`` > 0) adds noise to raise s to s_hat = s (1 + gamma)
before each step, gamma = min(s_churn / steps, sqrt(2) - 1) for s in [s_tmin, s_tmax].

On a path with alpha(T) = 0 the first level is s = inf: there dy/ds = eps_hat and the first
step is Euler's limit y = x0_hat + s_1 eps_hat (1 NFE; Heun's correction would weigh the
slopes by the infinite step), without churn; the later steps are EDM's.

Heun's correction only where the step shrinks the level by at most ``max_ratio`` (s_hat /
s_next <= 4 by default; a step to level 0, ``final="zero"``, never: Alg. 2's last step);
larger steps are Euler's (``common.heun_corrections`` says why: 2 steps on the flow default
gave FID 875 with the correction, 23 without). At 18 steps no step of the VP, VE or flow
grids exceeds 4, so the rule changes nothing there; on sub-VP, whose last levels fall
fastest, the last two steps become Euler's.
"""

from __future__ import annotations

import math

import torch

from scorelab.util.checks import number
from scorelab.sampling.common import after_step, heun_corrections, randn_like
from scorelab.sampling.registry import register


@register("edm", grid="karras", to_zero=True,
          rules={"s_churn": number(0), "s_tmin": number(0), "s_tmax": number(0),
                 "s_noise": number(0), "max_ratio": number(1)})
def edm_heun(model, path, x, ts, *, generator=None, callback=None, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             max_ratio: float = 4.0):
    batch = x.shape[0]
    alphas, sigmas = path.alpha_sigma(ts)
    levels = sigmas / alphas                                # VE-equivalent noise levels
    n = len(ts) - 1
    gamma_max = min(s_churn / n, math.sqrt(2) - 1) if s_churn > 0 else 0.0
    # Churned levels (never above the first level, where the prior lives) and their times.
    churned = (levels[:-1] >= s_tmin) & (levels[:-1] <= s_tmax) & torch.isfinite(levels[:-1])
    gammas = torch.where(churned,
                         torch.full_like(levels[:-1], gamma_max), torch.zeros_like(levels[:-1]))
    hat = torch.minimum(levels[:-1] * (1 + gammas), levels[0])
    t_hat = path.t_from_log_snr(-torch.log(hat.double())).to(ts)
    t_hat[gammas == 0] = ts[:-1][gammas == 0]
    a_hat, s_hat = path.alpha_sigma(t_hat)
    hat = s_hat / a_hat

    def denoise(y, t, alpha):
        return model(alpha * y, t.expand(batch)).x0

    y = x / alphas[0]
    infinite = (~torch.isfinite(levels)).tolist()      # once, not a host sync per step
    heun = heun_corrections(hat, levels[1:], max_ratio)
    nfe = 0
    for i in range(n):
        if infinite[i]:
            # alpha = 0 (pure noise): the Euler step's limit y = x0_hat + s_next eps_hat.
            pred = model(x, ts[i].expand(batch))
            y = pred.x0 + levels[i + 1] * pred.eps
            nfe += 1
            y = after_step(callback, i, alphas[i + 1] * y) / alphas[i + 1]
            continue
        y_hat = y
        if gamma_max > 0:
            y_hat = y + torch.sqrt((hat[i] ** 2 - levels[i] ** 2).clamp(min=0)) * s_noise \
                * randn_like(y, generator)
        d = (y_hat - denoise(y_hat, t_hat[i], a_hat[i])) / hat[i]
        y = y_hat + (levels[i + 1] - hat[i]) * d
        nfe += 1
        if heun[i]:
            d2 = (y - denoise(y, ts[i + 1], alphas[i + 1])) / levels[i + 1]
            y = y_hat + (levels[i + 1] - hat[i]) * 0.5 * (d + d2)
            nfe += 1
        y = after_step(callback, i, alphas[i + 1] * y) / alphas[i + 1]
    return alphas[-1] * y, nfe
