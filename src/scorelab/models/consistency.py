"""The consistency function's boundary-respecting parameterisation (Song et al. 2023,
Sec. 3 and App. C), for any head on any path.

In EDM's units, x_t = alpha (y), y = x0 + s z, the noise level s = sigma / alpha, the
consistency function is

    f(x, t) = c_skip(s) y + (1 - c_skip(s)) D(x, t),
    c_skip(s) = sigma_data^2 / ((s - sigma_min)^2 + sigma_data^2),

D the model's own x0 prediction (through its head). At s = sigma_min, c_skip = 1 and
f = y exactly (on the VE path, alpha = 1: f(x, sigma_min) = x); away from it f is the
denoiser with a vanishing correction, so a trained diffusion or flow model starts as a
consistency model of itself (ECT's initialisation, Geng et al. 2024). Song et al. write
c_out F with c_out = sigma_data (s - sigma_min) / sqrt(sigma_data^2 + s^2); with D in EDM's
own preconditioning the two parameterisations span the same functions.

Written with alpha and sigma, c_skip y = sigma_data^2 alpha x / ((sigma - sigma_min alpha)^2
+ sigma_data^2 alpha^2), finite where alpha = 0 (t = T on flow paths: f = D there).
"""

from __future__ import annotations

from torch import Tensor

from scorelab.models.prediction import Prediction
from scorelab.util.checks import check_values, number


class Boundary:
    """Args:
        sigma_min: the noise level where f is the identity (Song et al.: 0.002).
        sigma_data: the data's standard deviation in c_skip (0.5).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_data: float = 0.5):
        check_values("loss", dict(sigma_min=sigma_min, sigma_data=sigma_data),
                     {"sigma_min": number(0, lo_open=True),
                      "sigma_data": number(0, lo_open=True)})
        self.sigma_min, self.sigma_data = float(sigma_min), float(sigma_data)

    def skip(self, x: Tensor, alpha, sigma) -> tuple[Tensor, Tensor]:
        """(c_skip, c_skip y) at x, alpha, sigma (broadcast against x)."""
        sd2 = self.sigma_data ** 2
        gap = sigma - self.sigma_min * alpha
        denom = gap * gap + sd2 * alpha * alpha
        return sd2 * alpha * alpha / denom, sd2 * alpha * x / denom

    def apply(self, pred: Prediction) -> Prediction:
        """The consistency function's prediction at ``pred``'s x: x0 = f(x, t), eps such
        that x = alpha x0 + sigma eps."""
        c_skip, skipped = self.skip(pred.x, pred.alpha, pred.sigma)
        x0 = skipped + (1 - c_skip) * pred.x0
        eps = (pred.x - pred.alpha * x0) / pred.sigma
        return Prediction(pred.x, x0, eps, pred.alpha, pred.sigma, pred.d_alpha, pred.d_sigma,
                          pred.var_frac)

    def describe(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_data": self.sigma_data}

    def __repr__(self):
        return f"Boundary(sigma_min={self.sigma_min}, sigma_data={self.sigma_data})"
