"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++", Alg. 2 and its third-order
variant) in data-prediction form, for any SDE through alpha, sigma and lambda = log(alpha/sigma).

With h = lambda_s - lambda_t and m_k the x0_hat at earlier grid points,
    order 1 (= DDIM, eta 0): x_s = (sigma_s/sigma_t) x - alpha_s (e^{-h} - 1) m0
    order 2 (2M):            D = (1 + 1/(2 r)) m0 - 1/(2 r) m1,  r = h_prev / h
    order 3 (3M):            D1 = d0 + r0/(r0 + r1) (d0 - d1), D2 = (d0 - d1)/(r0 + r1),
                             d0 = (m0 - m1)/r0, d1 = (m1 - m2)/r1,
        x_s = (sigma_s/sigma_t) x - alpha_s phi1 m0 + alpha_s (phi1/h + 1) D1
              - alpha_s ((phi1/h + 1)/h - 1/2) D2,   phi1 = e^{-h} - 1.
The first steps use the lower orders the history allows (warm start); ``lower_order_final``
also lowers the order of the last steps, which is more stable for few steps.

On a path with alpha(T) = 0, lambda(T) = -inf: the first step has h = inf, phi1 = -1 and is
its limit x_s = (sigma_s / sigma_t) x + alpha_s m0 = alpha_s x0_hat + sigma_s eps_hat; the
ratios r = h_prev / h that involve it are infinite, so the next steps' corrections from it
vanish (1 / r = 0) instead of being 0/0. IEEE arithmetic gives exactly these limits.
"""

from __future__ import annotations

import torch

from scorelab.util.checks import boolean, integer
from scorelab.sampling.common import after_step, per_sample_times
from scorelab.sampling.registry import register


@register("dpm_solver", grid="logsnr",
          rules={"order": integer(1, 3), "lower_order_final": boolean()})
def dpm_solver_pp(model, path, x, ts, *, generator=None, callback=None, order: int = 2,
                  lower_order_final: bool = True):
    alphas, sigmas = path.alpha_sigma(ts)
    lams = torch.log(alphas) - torch.log(sigmas)
    times = per_sample_times(ts, x.shape[0])
    n = len(ts) - 1
    history: list[torch.Tensor] = []        # x0_hat at the latest grid points, newest last
    for i in range(n):
        s_t, a_s, s_s = sigmas[i], alphas[i + 1], sigmas[i + 1]
        m0 = model(x, times[i]).x0
        history = (history + [m0])[-3:]
        h = lams[i + 1] - lams[i]
        phi1 = torch.expm1(-h)
        k = min(order, len(history))
        if lower_order_final and n < 15:
            k = min(k, n - i)
        x = (s_s / s_t) * x - a_s * phi1 * m0
        if k >= 2:
            m1 = history[-2]
            r0 = (lams[i] - lams[i - 1]) / h
            if k == 2:
                x = x - a_s * phi1 * (0.5 / r0) * (m0 - m1)
            else:
                m2 = history[-3]
                r1 = (lams[i - 1] - lams[i - 2]) / h
                d0, d1 = (m0 - m1) / r0, (m1 - m2) / r1
                D1 = d0 + r0 / (r0 + r1) * (d0 - d1)
                D2 = (d0 - d1) / (r0 + r1)
                x = x + a_s * (phi1 / h + 1) * D1 - a_s * ((phi1 / h + 1) / h - 0.5) * D2
        x = after_step(callback, i, x)
    return x, n
