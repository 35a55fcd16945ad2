"""The Gaussian reverse step p(x_s | x_t) = N(c_x x + c_0 x0_hat, var) between times s < t of
any path x_t = alpha_t x0 + sigma_t eps, and its four variances.

The forward transition is x_t = a x_s + s_ts z with a = alpha_t / alpha_s and
s_ts^2 = sigma_t^2 - a^2 sigma_s^2 (``paths.sde.transition_kernel``). The posterior
q(x_s | x_t, x0) is Gaussian (Ho et al. 2020, Eq. 6-7; Kingma et al. 2021, App. A):

    mean = c_x x_t + c_0 x0,   c_x = a sigma_s^2 / sigma_t^2,   c_0 = alpha_s s_ts^2 / sigma_t^2,
    var  = s_ts^2 sigma_s^2 / sigma_t^2                               ("posterior", DDPM's beta~)

and the reverse model replaces x0 by the prediction x0_hat. Its variance is one of

* ``posterior``: the posterior's var (exact when x0 is a point mass);
* ``upper``:     s_ts^2, DDPM's beta (exact for x0 ~ N(0, I) on VP);
* ``learned``:   exp(f log s_ts^2 + (1 - f) log var), Improved DDPM's interpolation (Nichol &
                 Dhariwal 2021, Eq. 15) with f = (v + 1) / 2 from the network's extra channels
                 at (x_t, t). Both ends are recomputed for any s, so it holds on any respaced
                 grid (their Sec. 4);
* ``analytic``:  var + c_0^2 m_t, Analytic-DPM's optimal variance (Bao et al. 2022, Thm. 1):
                 the mean is linear in x0 with coefficient c_0, so the best variance adds
                 c_0^2 times m_t = E tr Cov[x0 | x_t] / d, which they estimate from the model's
                 own noise prediction as m_t = sigma_t^2 / alpha_t^2 (1 - E ||eps_hat||^2 / d),
                 clipped to [0, sigma_t^2 / alpha_t^2] (``X0Variance``).

DDIM's family (Song et al. 2021, Eq. 12) with the noise lambda^2 = eta^2 var has x0
coefficient c_0 = alpha_s - sqrt(sigma_s^2 - lambda^2) alpha_t / sigma_t, and the same
argument gives Analytic-DDIM's lambda^2 + c_0^2 m_t (Bao et al. 2022, Sec. 3).

Where sigma_s = 0 (the last step, to the data) the posterior variance is 0; its log is
clipped to the posterior variance of the step before, as Improved DDPM does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scorelab.paths.sde import transition_kernel

VARIANCES = ("posterior", "upper", "learned", "analytic")


def step_coefficients(alpha_s: Tensor, sigma_s: Tensor, alpha_t: Tensor,
                      sigma_t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_x, c_0, posterior variance, upper variance) of the step t -> s (module doc)."""
    a, upper = transition_kernel(alpha_s, sigma_s, alpha_t, sigma_t)
    st2 = sigma_t * sigma_t
    return a * sigma_s * sigma_s / st2, alpha_s * upper / st2, upper * sigma_s * sigma_s / st2, \
        upper


def reverse_log_variance(kind: str, posterior: Tensor, upper: Tensor,
                         var_frac: Tensor | None = None, c_0: Tensor | None = None,
                         x0_variance: Tensor | None = None,
                         clip_posterior: Tensor | None = None) -> Tensor:
    """log of the reverse step's variance of kind ``kind`` (``VARIANCES``).

    Args:
        posterior, upper: the step's posterior and upper variances (``step_coefficients``).
        var_frac: the learned fraction f (``learned``), shaped like the data.
        c_0, x0_variance: the mean's x0 coefficient and m_t (``analytic``).
        clip_posterior: the posterior variance to use where it is 0 (the step before's).
    """
    if kind == "upper":
        return torch.log(upper)
    if kind == "analytic":
        if x0_variance is None:
            raise ValueError("variance=analytic needs the model's x0 variance m_t "
                             "(X0Variance.estimate)")
        return torch.log(posterior + c_0 * c_0 * x0_variance)
    if clip_posterior is not None:
        posterior = torch.where(posterior > 0, posterior, clip_posterior)
    if kind == "posterior":
        return torch.log(posterior)
    if kind == "learned":
        if var_frac is None:
            raise ValueError("variance=learned needs a model with learned variance channels "
                             "(backbone.learn_sigma=true, trained with loss=hybrid or vlb)")
        return var_frac * torch.log(upper) + (1 - var_frac) * torch.log(posterior)
    raise ValueError(f"unknown reverse variance {kind!r}; known: {', '.join(VARIANCES)}")


class X0Variance:
    """m_t = E tr Cov[x0 | x_t] / d on a set of times, from the model's predictions on data
    (Analytic-DPM's moment, Bao et al. 2022, Eq. 8): sigma_t^2 / alpha_t^2 (1 - Gamma_t) with
    Gamma_t = E ||eps_hat||^2 / d clipped to [0, 1]. Where SNR < 1 the same moment is read in
    its x0 form, E ||x0||^2 / d - E ||x0_hat||^2 / d (equal for the exact prediction): the eps
    form's Monte-Carlo error grows as sigma^2 / alpha^2 there (at alpha = 0 it is 0 / 0),
    the x0 form's does not. Both are clipped to [0, the data's variance per dimension], the
    range of the exact moment (the law of total variance). Called with times it interpolates
    linearly between the estimated ones (a grid other than the estimate's, e.g. a sampler's
    respaced one).

    Args:
        times: ascending times [K].
        values: m at those times [K].
    """

    def __init__(self, times: Tensor, values: Tensor):
        order = torch.argsort(times)
        self.times, self.values = times[order].double().cpu(), values[order].double().cpu()

    def __call__(self, t: Tensor) -> Tensor:
        """m at times t (any shape), interpolated; clamped to the estimate's ends."""
        tt = t.detach().double().cpu().clamp(self.times[0], self.times[-1])
        hi = torch.searchsorted(self.times, tt).clamp(1, max(len(self.times) - 1, 1))
        if len(self.times) == 1:
            out = self.values.expand_as(tt)
        else:
            lo = hi - 1
            w = (tt - self.times[lo]) / (self.times[hi] - self.times[lo])
            out = self.values[lo] + w * (self.values[hi] - self.values[lo])
        return out.to(device=t.device, dtype=t.dtype if t.is_floating_point() else None)

    @classmethod
    @torch.no_grad()
    def estimate(cls, model, path, x0: Tensor, times: Tensor, chunk: int = 256,
                 generator: torch.Generator | None = None,
                 labels: Tensor | None = None) -> "X0Variance":
        """Estimate m at ``times`` from the data x0 [n, ...] (e.g. training examples): for
        each time and chunk, x_t = alpha x0 + sigma eps with eps from ``generator``, and the
        model's prediction ``model(x_t, t)`` (a prediction function), or with ``labels``
        [n] ``model(y)(x_t, t)`` for each chunk's labels y."""
        times = times.to(device=x0.device, dtype=torch.float64).flatten()
        d = x0[0].numel()
        data_var = float(x0.double().var(dim=0, unbiased=False).mean())
        values = []
        for t in times:
            eps_sq = x0_sq = x0_hat_sq = 0.0
            for start in range(0, x0.shape[0], chunk):
                xb = x0[start:start + chunk]
                tb = t.to(xb.dtype).expand(xb.shape[0])
                alpha, sigma = (v.to(xb.dtype) for v in path.alpha_sigma(t))
                noise = torch.randn(xb.shape, generator=generator, device=xb.device,
                                    dtype=xb.dtype)
                fn = model if labels is None else model(labels[start:start + chunk])
                pred = fn(alpha * xb + sigma * noise, tb)
                eps_sq += float(pred.eps.double().pow(2).sum())
                x0_sq += float(xb.double().pow(2).sum())
                x0_hat_sq += float(pred.x0.double().pow(2).sum())
            n = x0.shape[0] * d
            alpha, sigma = (float(v) for v in path.alpha_sigma(t))
            if alpha >= sigma:
                gamma = min(max(eps_sq / n, 0.0), 1.0)
                m = sigma * sigma / (alpha * alpha) * (1 - gamma)
            else:
                m = (x0_sq - x0_hat_sq) / n
            values.append(min(max(m, 0.0), data_var))
        return cls(times, torch.tensor(values, dtype=torch.float64))

    def state(self) -> dict:
        return {"times": self.times.tolist(), "values": self.values.tolist()}


def gaussian_kl(mean_1: Tensor, log_var_1: Tensor, mean_2: Tensor, log_var_2: Tensor) -> Tensor:
    """KL(N(mean_1, e^log_var_1) || N(mean_2, e^log_var_2)) per element, in nats."""
    return 0.5 * (log_var_2 - log_var_1 - 1 + torch.exp(log_var_1 - log_var_2)
                  + (mean_1 - mean_2) ** 2 * torch.exp(-log_var_2))


def gaussian_nll(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """-log N(x; mean, e^log_var) per element, in nats (continuous data)."""
    return 0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def discretized_gaussian_nll(x: Tensor, mean: Tensor, log_var: Tensor, bins: int = 256) -> Tensor:
    """-log of the probability N(mean, e^log_var) gives x's bin, per element, in nats: data
    with ``bins`` levels spread over [-1, 1] (bin width 2 / (bins - 1)), the first and last
    bins extended to -inf and +inf (Ho et al. 2020, Eq. 13)."""
    half = 1.0 / (bins - 1)
    inv_std = torch.exp(-0.5 * log_var)
    upper = (x - mean + half) * inv_std
    lower = (x - mean - half) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)           # the lowest bin: P(X < x + half)
    log_sf_lower = torch.special.log_ndtr(-lower)           # the highest: P(X > x - half)
    mid = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12))
    edge = 1.0 - half                                       # between the last two levels
    log_p = torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, mid))
    return -log_p
