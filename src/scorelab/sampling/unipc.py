"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models", Alg. 2-3 and App. B, data-prediction form) for any path
through alpha, sigma and lambda = log(alpha / sigma).

From grid point i to i + 1, with h = lambda_{i+1} - lambda_i, the model's x0_hat m_j at the
grid points, and for the p - 1 earlier points r_k = (lambda_{i-k} - lambda_i) / h and
D_k = (m_{i-k} - m_i) / r_k:

    UniP-p:  x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} phi(h) m_i
                       - alpha_{i+1} sum_k (B a)_k D_k,
    UniC-p:  the same from x_i with the new evaluation m_{i+1} (at the predicted x_{i+1})
             as one more difference D_p = m_{i+1} - m_i (r_p = 1), coefficients (B c),

with phi(h) = e^{-h} - 1 and (B a), (B c) solving R (B a) = g on the first p - 1 and all p
conditions, R_{jk} = r_k^{j-1}, g_j = j! (-h) phi_{j+1}(-h) (the exponential integrator's
phi functions: phi_1(z) = (e^z - 1)/z, phi_{k+1}(z) = (phi_k(z) - 1/k!)/z). The corrected
x_{i+1} is the next step's start; its evaluation m_{i+1} is reused by the next predictor, so
UniPC-p costs one NFE a step and has order p + 1 (UniP-p alone: order p). B(h) (``variant``)
enters where the reference implementation takes the small-h value of a coefficient instead
of solving: the order-2 predictor and the order-1 corrector use a = c = 1/2 with B(h) = -h
("bh1") or e^{-h} - 1 ("bh2", the default of diffusers' ``UniPCMultistepScheduler``).

The first steps use the orders their history allows; ``lower_order_final`` lowers the order
of the last steps to the steps left (for every step count, as diffusers' UniPC does). No
corrector follows the last step (it would cost an evaluation).

Infinite log-SNRs: a step from alpha(T) = 0 (h = inf) is the first-order limit
x = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} m_i, and its corrector is UniC-1's limit with
solved coefficients, (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} m_{i+1} (B(h) = h is
infinite there); a point at lambda = -inf never enters a later step's differences (its r is
infinite). A step to t = 0 (sigma = 0, ``final="zero"``) is first order: it returns m_i.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scorelab.sampling.common import after_step, per_sample_times
from scorelab.sampling.registry import register
from scorelab.util.checks import boolean, integer, one_of

VARIANTS = ("bh1", "bh2")


def unipc_coefficients(h: float, rs: list[float], variant: str) -> list[float]:
    """B(h) times the coefficients of the differences D_k at r_k = ``rs``: UniP-p's (rs: the
    p - 1 earlier points) or UniC-p's (rs: those and r_p = 1), in float64 on the host."""
    q = len(rs)
    if q == 0:
        return []
    hh = -h
    if q == 1:
        if math.isinf(h):
            # (UniC-1 from lambda = -inf) the solved coefficient's limit: g_1 -> -1
            return [-1.0]
        # UniP-2 / UniC-1: the reference's coefficient 1/2
        return [0.5 * (hh if variant == "bh1" else math.expm1(hh))]
    # g_j = j! (-h) phi_{j+1}(-h), by the recursion of the phi functions
    h_phi = math.expm1(hh) / hh - 1.0
    g, factorial = [], 1.0
    for j in range(1, q + 1):
        g.append(h_phi * factorial)
        factorial *= j + 1
        h_phi = h_phi / hh - 1.0 / factorial
    R = np.array([[r ** (j - 1) for r in rs] for j in range(1, q + 1)], dtype=np.float64)
    return np.linalg.solve(R, np.array(g, dtype=np.float64)).tolist()


@register("unipc", grid="logsnr", to_zero=True,
          rules={"order": integer(1, 3), "variant": one_of(VARIANTS, "variant"),
                 "corrector": boolean(), "lower_order_final": boolean()})
def unipc(model, path, x, ts, *, generator=None, callback=None, order: int = 2,
          variant: str = "bh2", corrector: bool = True, lower_order_final: bool = True):
    alphas, sigmas = path.alpha_sigma(ts.double())
    lams = (torch.log(alphas) - torch.log(sigmas)).tolist()
    ratio = (sigmas[1:] / sigmas[:-1]).to(x.dtype)       # sigma_{i+1} / sigma_i (0 at t = 0)
    alphas = alphas.to(x.dtype)
    times = per_sample_times(ts, x.shape[0])
    n = len(ts) - 1
    ms: list[torch.Tensor] = []          # x0_hat at the grid points so far (newest last)
    x_prev, prev_order = None, 0
    for i in range(n):
        m = model(x, times[i]).x0
        if corrector and x_prev is not None:
            # UniC on step i - 1 with the evaluation at its end; x_i becomes the corrected one
            x = _update(x_prev, ms, m, lams, i - 1, prev_order, variant, ratio, alphas)
        if i > 0:
            x = after_step(callback, i - 1, x)
        ms = (ms + [m])[-order:]
        k = min(order, len(ms), _finite_history(lams, i, order))
        if lower_order_final:
            k = min(k, n - i)
        if math.isinf(lams[i + 1]):
            k = 1                               # the step to sigma = 0: x0_hat
        x_prev, prev_order = x, k
        x = _update(x, ms, None, lams, i, k, variant, ratio, alphas)
    return after_step(callback, n - 1, x), n


def _finite_history(lams, i: int, order: int) -> int:
    """How many of the points i, i - 1, ... (at most ``order``) have a finite log-SNR."""
    k = 0
    while k < order and i - k >= 0 and math.isfinite(lams[i - k]):
        k += 1
    return max(k, 1)


def _update(x, ms, m_new, lams, i: int, p: int, variant: str, ratio, alphas):
    """UniP-p from grid point i to i + 1 (``m_new`` None) or UniC-p with the evaluation
    ``m_new`` at i + 1, from x = x_i. ``ms[-1]`` is m_i, ``ms[-1 - k]`` m_{i-k}."""
    h = lams[i + 1] - lams[i]
    m0 = ms[-1]
    rs = [(lams[i - k] - lams[i]) / h for k in range(1, p)]
    diffs = [(ms[-1 - k] - m0) / r for k, r in zip(range(1, p), rs)]
    if m_new is not None:
        rs, diffs = rs + [1.0], diffs + [m_new - m0]
    x = ratio[i] * x - alphas[i + 1] * math.expm1(-h) * m0
    for c, d in zip(unipc_coefficients(h, rs, variant), diffs):
        x = x - (alphas[i + 1] * c) * d
    return x
