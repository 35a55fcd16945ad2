"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++", Alg. 2 and its third-order
variant) in data-prediction form, for any SDE through alpha, sigma and lambda = log(alpha/sigma),
and its SDE variants (ibid. Sec. 5 / App.; diffusers' "sde-dpmsolver++").

With h = lambda_s - lambda_t, m_k the x0_hat at earlier grid points, phi1 = e^{-h} - 1:
    order 1 (= DDIM, eta 0): x_s = (sigma_s/sigma_t) x - alpha_s phi1 m0
    order 2 (2M):            ... - 1/2 alpha_s phi1 D1,   D1 = (m0 - m1) / r0,  r0 = h_prev / h
    order 3 (3M):            D1 = d0 + r0/(r0 + r1) (d0 - d1), D2 = (d0 - d1)/(r0 + r1),
                             d0 = (m0 - m1)/r0, d1 = (m1 - m2)/r1,
        x_s = (sigma_s/sigma_t) x - alpha_s phi1 m0 + alpha_s (phi1/h + 1) D1
              - alpha_s ((phi1/h + 1)/h - 1/2) D2.
``sde=true`` integrates the reverse SDE instead (exact in the linear part, the noise drawn
from the sampler's generator once a step), with psi = 1 - e^{-2h}:
    x_s = (sigma_s/sigma_t) e^{-h} x + alpha_s psi m0 [+ 1/2 alpha_s psi D1 (2M SDE)]
          [+ alpha_s (psi/(-2h) + 1) D1 + alpha_s ((psi - 2h)/(2h)^2 + 1/2) D2 (3M SDE)]
          + sigma_s sqrt(psi) z,
the integrals of 2 e^{-2(h - u)} (1, u/h, u^2/h^2 ...) over [0, h] against the Taylor terms
(k-diffusion's ``sample_dpmpp_3m_sde`` has these coefficients; diffusers' 3M SDE update
has -1/2 in the D2 coefficient, which does not vanish as h -> 0).
The first steps use the lower orders the history allows (warm start); ``lower_order_final``
also lowers the order of the last steps to the steps left when there are fewer than 15
(DPM-Solver++'s and diffusers' rule, more stable for few steps).

Infinite log-SNRs. On a path with alpha(T) = 0, lambda(T) = -inf: the first step has
h = inf, phi1 = -1 and is its limit x_s = (sigma_s / sigma_t) x + alpha_s m0 = alpha_s x0_hat
+ sigma_s eps_hat (the SDE variant: alpha_s m0 + sigma_s z); the ratios r = h_prev / h that
involve it are infinite, so the next steps' corrections from it vanish (1 / r = 0) instead
of being 0/0. IEEE arithmetic gives exactly these limits. A last step to t = 0 (sigma = 0,
``final="zero"``) is first order and returns m0, the model's final x0 prediction.
"""

from __future__ import annotations

import torch

from scorelab.util.checks import boolean, integer
from scorelab.sampling.common import after_step, per_sample_times, randn_like
from scorelab.sampling.registry import register


@register("dpm_solver", grid="logsnr", to_zero=True,
          rules={"order": integer(1, 3), "lower_order_final": boolean(), "sde": boolean()})
def dpm_solver_pp(model, path, x, ts, *, generator=None, callback=None, order: int = 2,
                  lower_order_final: bool = True, sde: bool = False):
    alphas, sigmas = path.alpha_sigma(ts)
    lams = torch.log(alphas) - torch.log(sigmas)
    to_zero = (torch.isinf(lams) & (lams > 0)).tolist()     # sigma = 0 (final="zero")
    times = per_sample_times(ts, x.shape[0])
    n = len(ts) - 1
    history: list[torch.Tensor] = []        # x0_hat at the latest grid points, newest last
    for i in range(n):
        s_t, a_s, s_s = sigmas[i], alphas[i + 1], sigmas[i + 1]
        m0 = model(x, times[i]).x0
        history = (history + [m0])[-3:]
        h = lams[i + 1] - lams[i]
        k = min(order, len(history))
        if lower_order_final and n < 15:
            k = min(k, n - i)
        if to_zero[i + 1]:
            k = 1                               # the step to sigma = 0: x0_hat
        if sde:
            x = _sde_step(x, history, k, lams, i, h, s_t, a_s, s_s, generator)
        else:
            x = _ode_step(x, history, k, lams, i, h, s_t, a_s, s_s)
        x = after_step(callback, i, x)
    return x, n


def _differences(history, k: int, lams, i: int, h):
    """(D1, D2) of the k-th order multistep update (None where the order does not use it)."""
    m0 = history[-1]
    if k < 2:
        return None, None
    r0 = (lams[i] - lams[i - 1]) / h
    if k == 2:
        return (m0 - history[-2]) / r0, None
    r1 = (lams[i - 1] - lams[i - 2]) / h
    d0, d1 = (m0 - history[-2]) / r0, (history[-2] - history[-3]) / r1
    return d0 + r0 / (r0 + r1) * (d0 - d1), (d0 - d1) / (r0 + r1)


def _ode_step(x, history, k, lams, i, h, s_t, a_s, s_s):
    phi1 = torch.expm1(-h)
    x = (s_s / s_t) * x - a_s * phi1 * history[-1]
    D1, D2 = _differences(history, k, lams, i, h)
    if k == 2:
        x = x - 0.5 * a_s * phi1 * D1
    elif k == 3:
        x = x + a_s * (phi1 / h + 1) * D1 - a_s * ((phi1 / h + 1) / h - 0.5) * D2
    return x


def _sde_step(x, history, k, lams, i, h, s_t, a_s, s_s, generator):
    psi = -torch.expm1(-2 * h)
    z = randn_like(x, generator)
    x = (s_s / s_t) * torch.exp(-h) * x + a_s * psi * history[-1]
    D1, D2 = _differences(history, k, lams, i, h)
    if k == 2:
        x = x + 0.5 * a_s * psi * D1
    elif k == 3:
        x = x + a_s * (psi / (-2 * h) + 1) * D1 + a_s * ((psi - 2 * h) / (2 * h) ** 2 + 0.5) * D2
    return x + s_s * torch.sqrt(psi) * z
