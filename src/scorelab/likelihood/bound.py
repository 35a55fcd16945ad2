"""Variational bounds on -log p(x0) of a diffusion model, per example, in nats.

Discrete (DDPM, Ho et al. 2020, Eq. 5; Improved DDPM, Nichol & Dhariwal 2021, Sec. 2) on a
time grid T = t_K > ... > t_0 of any path x_t = alpha_t x0 + sigma_t eps:

    L = KL(q(x_T | x0) || p_T)                                         prior
      + sum_k KL(q(x_{t_{k-1}} | x_{t_k}, x0) || p(x_{t_{k-1}} | x_{t_k}))   diffusion (L_t)
      - log p(x0 | x_{t_0})                                            decoder

with the reverse steps of ``reverse_step`` (mean from x0_hat, the chosen variance) and the
decoder N(x0_hat, var) of the step from t_0 to the data (alpha = 1, sigma = 0: upper variance
sigma_{t_0}^2, DDPM's beta_1), discretised over 8-bit bins for images (Ho et al. Eq. 13) and
a density for continuous data. Each L_t is estimated with one draw x_t ~ q(x_t | x0) and the
KL in closed form given x0, as Improved DDPM's bits/dim loop does.

Continuous (VDM, Kingma et al. 2021, Eq. 17 and 21), for any path and head:

    L = KL(q(x_{t_hi} | x0) || p_T) + 1/2 int_{SNR(t_hi)}^{SNR(eps)} ||x0 - x0_hat(x_t)||^2 dSNR
      - log p(x0 | x_eps),

SNR = alpha^2 / sigma^2 = e^{2 lambda}. The integral is invariant to the schedule between its
end points (their Eq. 21), so it is estimated in lambda: (lambda_hi - lambda_lo) E_lambda [e^{2
lambda} ||x0 - x0_hat||^2], lambda uniform (stratified over ``n_times`` draws per example),
where the integrand stays of order d at every noise level. On a path whose alpha(T) = 0
(lambda(T) = -inf) the integral starts at ``lambda_min`` (t_hi, where alpha / sigma = e^-15)
and the prior term is the KL there -- the bound of the same model started at t_hi, which
differs from T's by less than the rounding of the KL. The decoder is q(x_eps | x0) inverted:
N(x_eps / alpha, sigma^2 / alpha^2), in expectation over the draw.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from scorelab.likelihood.reverse_step import (discretized_gaussian_nll, gaussian_kl,
                                              gaussian_nll, reverse_log_variance,
                                              step_coefficients)
from scorelab.paths.sde import batch_broadcast


def _sum(v: Tensor) -> Tensor:
    return v.flatten(1).sum(1)


def _coefficients(path, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    alpha, sigma = path.alpha_sigma(t)
    return batch_broadcast(alpha, like).to(like.dtype), batch_broadcast(sigma, like).to(like.dtype)


def _draw(path, x0: Tensor, t: Tensor, generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(t [B], x_t, alpha_t, sigma_t) with x_t ~ q(x_t | x0)."""
    tb = t.to(x0.dtype).expand(x0.shape[0]) if t.dim() == 0 else t.to(x0.dtype)
    alpha, sigma = _coefficients(path, tb, x0)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return tb, alpha * x0 + sigma * noise, alpha, sigma


def prior_kl(path, x0: Tensor, t: Tensor) -> Tensor:
    """KL(q(x_t | x0) || N(0, prior_std^2 I)) per example, nats."""
    alpha, sigma = _coefficients(path, t.to(x0.dtype).expand(x0.shape[0]) if t.dim() == 0
                                 else t.to(x0.dtype), x0)
    p2 = path.prior_std() ** 2
    s2 = (sigma * sigma).expand_as(x0)
    return _sum(0.5 * (math.log(p2) - torch.log(s2) - 1 + s2 / p2 + (alpha * x0) ** 2 / p2))


class BoundTerms(NamedTuple):
    total: Tensor            # [B] nats
    prior: Tensor            # [B]
    diffusion: Tensor        # [B] the sum of the L_t (discrete) or the integral (continuous)
    decoder: Tensor          # [B] -log p(x0 | x_{t_0})
    per_step: Tensor | None  # [B, K] each L_t, from t = T down (discrete), None (continuous)


def decoder_nll(x0: Tensor, mean: Tensor, log_var: Tensor, bins: int | None) -> Tensor:
    """-log p(x0 | x_t) per example: discretised over ``bins`` levels, or a density (None)."""
    if bins is None:
        return _sum(gaussian_nll(x0, mean, log_var.expand_as(x0)))
    return _sum(discretized_gaussian_nll(x0, mean, log_var.expand_as(x0), bins))


@torch.no_grad()
def discrete_vlb(model, path, x0: Tensor, ts: Tensor, variance: str = "posterior",
                 x0_variance=None, bins: int | None = None,
                 generator: torch.Generator | None = None) -> BoundTerms:
    """The discrete bound (module doc) of the model's reverse chain on the grid ``ts``
    (T = ts[0] > ... > ts[-1] = t_0 > 0) with reverse variance ``variance``
    (``reverse_step.VARIANCES``; ``x0_variance`` an ``X0Variance`` for ``analytic``).

    Args:
        model: prediction function ``model(x, t) -> Prediction`` (labels bound).
        x0: data in model space [B, ...] (for ``bins``, on the levels of [-1, 1]).
        bins: the decoder's number of levels (256 for 8-bit images), None: continuous data.
        generator: for the draws x_t ~ q(x_t | x0).
    """
    if len(ts) < 2 or float(ts[-1]) <= 0:
        raise ValueError("the discrete bound needs a grid of at least one step ending at t > 0")
    steps, clip = [], None
    for k in range(len(ts) - 1):
        t, s = ts[k], ts[k + 1]
        tb, x_t, alpha_t, sigma_t = _draw(path, x0, t, generator)
        alpha_s, sigma_s = _coefficients(path, s.expand(x0.shape[0]).to(x0.dtype), x0)
        c_x, c_0, post, upper = step_coefficients(alpha_s, sigma_s, alpha_t, sigma_t)
        pred = model(x_t, tb)
        m = None if x0_variance is None else batch_broadcast(x0_variance(tb), x0)
        log_var = reverse_log_variance(variance, post, upper, pred.var_frac, c_0, m)
        kl = gaussian_kl(c_x * x_t + c_0 * x0, torch.log(post), c_x * x_t + c_0 * pred.x0,
                         log_var)
        steps.append(_sum(kl))
        clip = post
    t0 = ts[-1]
    tb, x_t, alpha_t, sigma_t = _draw(path, x0, t0, generator)
    ones = torch.ones_like(alpha_t)
    _, c_0, post, upper = step_coefficients(ones, torch.zeros_like(sigma_t), alpha_t, sigma_t)
    pred = model(x_t, tb)
    m = None if x0_variance is None else batch_broadcast(x0_variance(tb), x0)
    log_var = reverse_log_variance(variance, post, upper, pred.var_frac, c_0, m,
                                   clip_posterior=clip)
    decoder = decoder_nll(x0, pred.x0, log_var, bins)
    prior = prior_kl(path, x0, ts[0])
    per_step = torch.stack(steps, dim=1)
    diffusion = per_step.sum(1)
    return BoundTerms(prior + diffusion + decoder, prior, diffusion, decoder, per_step)


@torch.no_grad()
def continuous_elbo(model, path, x0: Tensor, n_times: int = 1, eps: float = 1e-5,
                    lambda_min: float = -15.0, bins: int | None = None,
                    generator: torch.Generator | None = None) -> BoundTerms:
    """VDM's continuous-time bound (module doc), per example, with ``n_times`` stratified
    draws of lambda per example. ``bins``: discretised decoder (None: a density; images
    dequantised beforehand, as ``bpd`` does, use None)."""
    B, dtype = x0.shape[0], x0.dtype
    T = torch.tensor(float(path.T), dtype=torch.float64)
    lam_hi = float(path.log_snr(torch.tensor(float(eps), dtype=torch.float64)))
    lam_T = float(path.log_snr(T))
    if lam_T >= lambda_min:
        lam_lo, t_hi = lam_T, T
    else:
        lam_lo = lambda_min
        t_hi = path.t_from_log_snr(torch.tensor(lambda_min, dtype=torch.float64))
    if not lam_lo < lam_hi:
        raise ValueError(f"the ELBO needs log-SNR(eps) > log-SNR(T); got {lam_hi} <= {lam_lo}")
    span = lam_hi - lam_lo
    offset = torch.rand(B, generator=generator, device=x0.device, dtype=torch.float64)
    diffusion = torch.zeros(B, device=x0.device, dtype=dtype)
    for j in range(n_times):
        lam = lam_lo + span * (j + offset) / n_times          # stratified in [lam_lo, lam_hi)
        t = path.t_from_log_snr(lam.cpu()).to(device=x0.device)
        tb, x_t, _, _ = _draw(path, x0, t, generator)
        err = _sum((x0 - model(x_t, tb).x0) ** 2)
        diffusion = diffusion + span * torch.exp(2 * lam).to(dtype) * err / n_times
    tb, x_t, alpha, sigma = _draw(path, x0, torch.tensor(float(eps), dtype=torch.float64,
                                                          device=x0.device), generator)
    log_var = torch.log(sigma * sigma / (alpha * alpha))
    if bins is None:        # in expectation over the draw: d/2 (log(2 pi var) + 1)
        decoder = 0.5 * x0[0].numel() * (math.log(2 * math.pi) + 1) \
            + 0.5 * _sum(log_var.expand_as(x0))
    else:
        decoder = decoder_nll(x0, x_t / alpha, log_var, bins)
    prior = prior_kl(path, x0, t_hi.to(x0.device))
    return BoundTerms(prior + diffusion + decoder, prior, diffusion, decoder, None)
