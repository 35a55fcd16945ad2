"""DDIM (Song, Meng & Ermon 2021, Eq. 12) in alpha/sigma form, so it runs on every SDE.

From t to s < t on the grid, with x0_hat and eps_hat the model's prediction at (x, t):

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,
    c   = eta * (sigma_s / sigma_t) * sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2).

On VP (alpha^2 + sigma^2 = 1) this is DDIM's sigma_t(eta); eta = 0 is deterministic (the
probability-flow ODE's first-order exponential integrator), eta = 1 the ancestral sampler.
The step needs alpha_t only through alpha_t / alpha_s, so it starts from alpha(T) = 0 too;
a step to t = 0 (sigma_s = 0, ``final="zero"``) gives alpha_s x0_hat.

``variance="analytic"`` is Analytic-DDIM (Bao et al. 2022, Sec. 3): the mean as above with
c = eta (...), and the injected noise's variance c^2 + c_0^2 m_t, c_0 = alpha_s -
sqrt(sigma_s^2 - c^2) alpha_t / sigma_t the mean's coefficient on x0_hat and m_t the model's
x0 variance on data (``reverse_step.X0Variance``); it adds noise at eta = 0 too.
"""

from __future__ import annotations

import torch

from scorelab.util.checks import number, one_of
from scorelab.sampling.common import after_step, per_sample_times, randn_like
from scorelab.sampling.pc import X0_VARIANCE_RULE, check_analytic
from scorelab.sampling.registry import register
from scorelab.paths.sde import transition_kernel

DDIM_VARIANCES = ("posterior", "analytic")


@register("ddim", grid="uniform", to_zero=True,
          rules={"eta": number(0), "variance": one_of(DDIM_VARIANCES, "DDIM variance (upper "
                                                       "and learned are the ancestral step's: "
                                                       "sampler=ancestral)"),
                 "x0_variance": X0_VARIANCE_RULE})
def ddim(model, path, x, ts, *, generator=None, callback=None, eta: float = 0.0,
         variance: str = "posterior", x0_variance=None):
    check_analytic(dict(variance=variance, x0_variance=x0_variance))
    alphas, sigmas = path.alpha_sigma(ts)
    times = per_sample_times(ts, x.shape[0])
    ms = x0_variance(ts).to(x.dtype) if variance == "analytic" else None
    # Analytic-DDIM adds noise on every step but one to t = 0 (read once, not per step)
    analytic = [variance == "analytic" and bool(s > 0) for s in sigmas[1:].tolist()]
    for i in range(len(ts) - 1):
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        pred = model(x, times[i])
        c = eta * (s_s / s_t) * torch.sqrt(transition_kernel(a_s, s_s, a_t, s_t)[1])
        keep = torch.sqrt((s_s * s_s - c * c).clamp(min=0))
        x = a_s * pred.x0 + keep * pred.eps
        if analytic[i]:
            c_0 = a_s - keep * a_t / s_t
            c = torch.sqrt(c * c + c_0 * c_0 * ms[i])
        if eta > 0 or analytic[i]:
            x = x + c * randn_like(x, generator)
        x = after_step(callback, i, x)
    return x, len(ts) - 1
