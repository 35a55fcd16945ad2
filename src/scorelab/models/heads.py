"""Prediction heads: what the backbone's raw output means, and how to turn it into a score.

With x = alpha x0 + sigma eps (any of the SDEs; alpha, sigma broadcastable to x):

    eps   head: eps_hat = out;  x0_hat = (x - sigma out) / alpha
    x0    head: x0_hat  = out;  eps_hat = (x - alpha out) / sigma
    v     head (Salimans & Ho 2022, v = alpha eps - sigma x0):
                x0_hat  = (alpha x - sigma v) / (alpha^2 + sigma^2)
                eps_hat = (sigma x + alpha v) / (alpha^2 + sigma^2)
    score head: s_hat = out;    eps_hat = -sigma out;   x0_hat = (x + sigma^2 out) / alpha
    edm   head (Karras et al. 2022, Table 1, written for any alpha; s_d = sigma_data):
                x0_hat = c_skip x + c_out out,   r = sigma^2 + alpha^2 s_d^2,
                c_skip = alpha s_d^2 / r,  c_out = sigma s_d / sqrt(r),  c_in = 1 / sqrt(r)
    velocity  head (flow matching, u = alpha' x0 + sigma' eps = dx_t/dt; alpha', sigma' the
                path's time derivatives, det = alpha sigma' - sigma alpha'):
                x0_hat  = (sigma' x - sigma u) / det,  eps_hat = (alpha u - alpha' x) / det

and for every head the score is s = -eps_hat / sigma (Tweedie; Vincent 2011). ``v`` is
v-prediction, ``velocity`` is dx_t/dt: two different heads. The eps and score heads cannot
give x0 where alpha = 0 (``x0_at_pure_noise``), so they cannot start a sampler at t = T on a
path with alpha(T) = 0 (the flow-matching paths); every other head can. The v formulas
hold for any alpha, sigma (VE included), not only alpha^2 + sigma^2 = 1.

EDM's coefficients are its own (c_skip(s), c_out(s), c_in(s) at s = sigma / alpha, on the
input x / alpha) multiplied out, so they stay finite where alpha = 0. With s_d = 1 on VP the
edm head is the v head up to sign. ``c_in`` is the input scaling the backbone sees
(``ScoreModel``): 1 / sqrt(alpha^2 + sigma^2) for every head (EDM's c_in with s_d = 1; exactly
1 on VP), 1 / sqrt(sigma^2 + alpha^2 s_d^2) for the edm head.

``loss_scale`` is the factor applied to (out - target) in the unweighted loss: 1 for the
eps and x0 heads (plain MSE in the head's own space); 1 / sqrt(alpha^2 + sigma^2) for the v
head, which is 1 on VP and keeps the target at unit variance on VE, where |v| grows like
sigma; sigma for the score head, which gives Score SDE's default lambda(t) = sigma^2 — an
unscaled score MSE would be dominated by t -> 0 where the target grows like 1 / sigma; 1 for
the edm head, whose unit-weight MSE on the raw output is EDM's lambda = 1 / c_out^2 on x0;
1 for the velocity head (conditional flow matching, Lipman et al. 2023).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from scorelab.util.checks import check_value, number


def unit_input_scale(alpha: Tensor, sigma: Tensor) -> Tensor:
    """1 / sqrt(alpha^2 + sigma^2): EDM's c_in with sigma_data = 1, for any alpha (exactly 1
    on VP); what every network fed a noisy input x_t sees it multiplied by."""
    return torch.rsqrt(alpha * alpha + sigma * sigma)


class Head(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    def target(self, x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor,
               d_alpha: Tensor | None = None, d_sigma: Tensor | None = None) -> Tensor:
        """The training target of the raw output at x = alpha x0 + sigma noise."""

    @abc.abstractmethod
    def to_eps(self, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor,
               d_alpha: Tensor | None = None, d_sigma: Tensor | None = None) -> Tensor:
        """The noise estimate implied by raw output ``out`` at x."""

    @abc.abstractmethod
    def to_x0(self, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor,
               d_alpha: Tensor | None = None, d_sigma: Tensor | None = None) -> Tensor:
        """The clean-data estimate implied by raw output ``out`` at x."""

    def to_score(self, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor,
                 d_alpha: Tensor | None = None, d_sigma: Tensor | None = None) -> Tensor:
        return -self.to_eps(out, x, alpha, sigma, d_alpha, d_sigma) / sigma

    #: whether the head gives x0 where alpha = 0 (needed to sample paths with alpha(T) = 0)
    x0_at_pure_noise: bool = True

    def loss_scale(self, alpha: Tensor, sigma: Tensor):
        return 1.0

    def c_in(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Input scaling of the backbone: EDM's c_in with sigma_data = 1, for any alpha."""
        return unit_input_scale(alpha, sigma)

    def __repr__(self):
        return f"{type(self).__name__}()"


class EpsHead(Head):
    name = "eps"
    x0_at_pure_noise = False

    def target(self, x0, noise, alpha, sigma, d_alpha=None, d_sigma=None):
        return noise

    def to_eps(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return out

    def to_x0(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return (x - sigma * out) / alpha


class X0Head(Head):
    name = "x0"

    def target(self, x0, noise, alpha, sigma, d_alpha=None, d_sigma=None):
        return x0

    def to_eps(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return (x - alpha * out) / sigma

    def to_x0(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return out

    def to_score(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return -(x - alpha * out) / (sigma * sigma)


class VHead(Head):
    name = "v"

    def target(self, x0, noise, alpha, sigma, d_alpha=None, d_sigma=None):
        return alpha * noise - sigma * x0

    def to_eps(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return (sigma * x + alpha * out) / (alpha * alpha + sigma * sigma)

    def to_x0(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return (alpha * x - sigma * out) / (alpha * alpha + sigma * sigma)

    def loss_scale(self, alpha, sigma):
        return torch.rsqrt(alpha * alpha + sigma * sigma)


class ScoreHead(Head):
    name = "score"
    x0_at_pure_noise = False

    def target(self, x0, noise, alpha, sigma, d_alpha=None, d_sigma=None):
        return -noise / sigma

    def to_eps(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return -sigma * out

    def to_x0(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return (x + sigma * sigma * out) / alpha

    def to_score(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return out

    def loss_scale(self, alpha, sigma):
        return sigma


class EDMHead(Head):
    """EDM's preconditioned denoiser D = c_skip x + c_out F (Karras et al. 2022, Eq. 7 and
    Table 1). Args: sigma_data: the data's standard deviation (EDM: 0.5)."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5):
        check_value("head.sigma_data", sigma_data, number(0, lo_open=True))
        self.sigma_data = float(sigma_data)

    def _skip_out(self, alpha, sigma):
        sd = self.sigma_data
        r = sigma * sigma + alpha * alpha * (sd * sd)
        return alpha * (sd * sd) / r, sigma * sd * torch.rsqrt(r)

    def target(self, x0, noise, alpha, sigma, d_alpha=None, d_sigma=None):
        c_skip, c_out = self._skip_out(alpha, sigma)
        return (x0 - c_skip * (alpha * x0 + sigma * noise)) / c_out

    def to_x0(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        c_skip, c_out = self._skip_out(alpha, sigma)
        return c_skip * x + c_out * out

    def to_eps(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return (x - alpha * self.to_x0(out, x, alpha, sigma)) / sigma

    def c_in(self, alpha, sigma):
        return torch.rsqrt(sigma * sigma + alpha * alpha * (self.sigma_data ** 2))

    def __repr__(self):
        return f"EDMHead(sigma_data={self.sigma_data})"


class VelocityHead(Head):
    """The flow velocity u = alpha' x0 + sigma' eps = dx_t/dt (flow matching; on the linear
    path u = eps - x0). x0 and eps solve the 2x2 system x = alpha x0 + sigma eps,
    u = alpha' x0 + sigma' eps, whose determinant alpha sigma' - sigma alpha' =
    -alpha sigma lambda' is non-zero wherever the log-SNR decreases (alpha(T) = 0 included)."""

    name = "velocity"

    @staticmethod
    def _det(alpha, sigma, d_alpha, d_sigma):
        if d_alpha is None or d_sigma is None:
            raise ValueError("the velocity head needs the path's derivatives alpha', sigma'")
        return alpha * d_sigma - sigma * d_alpha

    def target(self, x0, noise, alpha, sigma, d_alpha=None, d_sigma=None):
        self._det(alpha, sigma, d_alpha, d_sigma)
        return d_alpha * x0 + d_sigma * noise

    def to_x0(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return (d_sigma * x - sigma * out) / self._det(alpha, sigma, d_alpha, d_sigma)

    def to_eps(self, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
        return (alpha * out - d_alpha * x) / self._det(alpha, sigma, d_alpha, d_sigma)


HEADS = {cls.name: cls for cls in (EpsHead, X0Head, VHead, ScoreHead, EDMHead, VelocityHead)}


def get_head(name: str, **options) -> Head:
    """A head by name; ``options`` are its constructor's (e.g. ``sigma_data`` of edm)."""
    try:
        cls = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(HEADS)}") from None
    try:
        return cls(**options)
    except TypeError:
        raise ValueError(f"head {name!r} takes no option(s) {', '.join(sorted(options))}") \
            from None
