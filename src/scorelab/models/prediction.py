"""The one conversion layer: a model's prediction at (x, t), read in any parametrisation.

On a path x_t = alpha x0 + sigma eps (any SDE or interpolant; alpha' and sigma' its time
derivatives) a prediction holds the pair (x0_hat, eps_hat) with x = alpha x0_hat +
sigma eps_hat, and reads as

    x0       = x0_hat                             (the denoiser D(x, t))
    eps      = eps_hat
    score    = -eps_hat / sigma                   (Tweedie; Vincent 2011)
    v        = alpha eps_hat - sigma x0_hat       (v-prediction, Salimans & Ho 2022)
    velocity = alpha' x0_hat + sigma' eps_hat     (dx_t/dt, the probability-flow ODE's drift
                                                   and the flow-matching target)

These hold for any alpha, sigma -- alpha(T) = 0 included, where x0 cannot be recovered from
a score by dividing by alpha; a model that predicts x0, v or velocity gives it there.

Guidance (``scorelab.guidance.predictions``) builds new predictions from old ones with two
operations that keep x = alpha x0_hat + sigma eps_hat, so they mean the same in every
parametrisation: ``guide`` (ref + w (pred - ref) on x0_hat and eps_hat alike: classifier-free
guidance and autoguidance, affine in the output) and ``shift_score`` (score + delta:
classifier guidance, eps_hat - sigma delta, x0_hat + sigma^2 / alpha delta).

A model with learned reverse variances (``backbone.learn_sigma``) also carries
``var_frac``, Improved DDPM's interpolation fraction (v + 1) / 2 of its extra output channels
(``scorelab.likelihood.reverse_step``); guidance keeps the conditional prediction's (as
DiT's sampling does), and every reading above ignores it.

Samplers, the likelihood and guidance consume a *prediction function* ``model(x, t) ->
Prediction``. ``as_prediction_fn`` accepts a function returning either a ``Prediction`` or a
plain score tensor (the oracle, user code), which it wraps with ``Prediction.from_score``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scorelab.models.heads import ScoreHead, X0Head


class Prediction:
    """(x0_hat, eps_hat) at x, with the path's coefficients broadcast against x.

    Args:
        x: the noisy input x_t.
        x0, eps: the model's clean-data and noise estimates.
        alpha, sigma, d_alpha, d_sigma: the path's coefficients and time derivatives at t,
            broadcastable against x.
        var_frac: the learned-variance fraction, shaped like x (None: no learned variance).
    """

    __slots__ = ("x", "x0", "eps", "alpha", "sigma", "d_alpha", "d_sigma", "var_frac")

    def __init__(self, x: Tensor, x0: Tensor, eps: Tensor, alpha, sigma, d_alpha, d_sigma,
                 var_frac: Tensor | None = None):
        self.x, self.x0, self.eps = x, x0, eps
        self.alpha, self.sigma, self.d_alpha, self.d_sigma = alpha, sigma, d_alpha, d_sigma
        self.var_frac = var_frac

    @property
    def score(self) -> Tensor:
        return -self.eps / self.sigma

    @property
    def v(self) -> Tensor:
        return self.alpha * self.eps - self.sigma * self.x0

    @property
    def velocity(self) -> Tensor:
        return self.d_alpha * self.x0 + self.d_sigma * self.eps

    def guide(self, ref: "Prediction", w: Tensor) -> "Prediction":
        """ref + w (self - ref) on x0_hat and eps_hat, w [B] per sample (w = 1: self).
        Affine with weights summing to 1, so x = alpha x0 + sigma eps still holds and the
        score, v and velocity are guided by the same rule."""
        w = w.reshape((-1,) + (1,) * (self.x.dim() - 1)).to(self.x.dtype)
        return Prediction(self.x, ref.x0 + w * (self.x0 - ref.x0),
                          ref.eps + w * (self.eps - ref.eps),
                          self.alpha, self.sigma, self.d_alpha, self.d_sigma, self.var_frac)

    def shift_score(self, delta: Tensor) -> "Prediction":
        """The prediction at the same x whose score is score + delta: eps_hat - sigma delta,
        x0_hat + sigma^2 / alpha delta. Where alpha = 0 (pure noise: p_T(. | y) = p_T, so
        the shift of an exact posterior vanishes) the prediction is left unchanged."""
        alpha = self.alpha if isinstance(self.alpha, Tensor) else torch.tensor(self.alpha)
        live = alpha != 0
        delta = torch.where(live, delta, torch.zeros_like(delta))
        safe = torch.where(live, alpha, torch.ones_like(alpha))
        return Prediction(self.x, self.x0 + self.sigma * self.sigma / safe * delta,
                          self.eps - self.sigma * delta,
                          self.alpha, self.sigma, self.d_alpha, self.d_sigma, self.var_frac)

    def clip_x0(self, limit: float) -> "Prediction":
        """x0_hat clamped to [-limit, limit] and eps_hat re-derived from it, (x - alpha x0) /
        sigma (DDPM's ``clip_denoised``; diffusers' ``clip_sample``, GLIDE's clipped model
        output): x = alpha x0 + sigma eps still holds, so every reading of the prediction
        (score, v, velocity) follows the clipped x0."""
        x0 = self.x0.clamp(-limit, limit)
        return Prediction(self.x, x0, (self.x - self.alpha * x0) / self.sigma, self.alpha,
                          self.sigma, self.d_alpha, self.d_sigma, self.var_frac)

    def chunk(self, n: int) -> list["Prediction"]:
        """Split a prediction of n stacked batches (one batched forward pass) into n."""
        def parts(v):
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == self.x.shape[0]:
                return v.chunk(n)
            return [v] * n
        fields = [parts(getattr(self, k)) for k in self.__slots__]
        return [Prediction(*row) for row in zip(*fields)]

    @classmethod
    def from_head(cls, head, out: Tensor, x: Tensor, coefficients,
                  var_frac: Tensor | None = None) -> "Prediction":
        """What raw output ``out`` means under ``head`` (``scorelab.models.heads``), with
        ``coefficients`` = (alpha, sigma, alpha', sigma') broadcast against x."""
        return cls(x, head.to_x0(out, x, *coefficients), head.to_eps(out, x, *coefficients),
                   *coefficients, var_frac)

    @classmethod
    def from_score(cls, path, x: Tensor, t: Tensor, score: Tensor) -> "Prediction":
        """The score head's reading: eps = -sigma score, x0 = (x + sigma^2 score) / alpha
        (undefined where alpha = 0)."""
        return cls.from_head(ScoreHead(), score, x, path.coefficients(t, like=x))

    @classmethod
    def from_x0(cls, path, x: Tensor, t: Tensor, x0: Tensor) -> "Prediction":
        """The x0 head's reading: eps = (x - alpha x0) / sigma (finite where alpha = 0)."""
        return cls.from_head(X0Head(), x0, x, path.coefficients(t, like=x))


def as_prediction_fn(fn, path):
    """``model(x, t) -> Prediction`` from ``fn(x, t)`` returning a Prediction or a score."""
    if getattr(fn, "returns_prediction", False):
        return fn

    def model(x: Tensor, t: Tensor, **kw) -> Prediction:
        out = fn(x, t, **kw)        # (kw: a two-time model's r)
        if isinstance(out, Prediction):
            return out
        if path.alpha_vanishes and (path.alpha_sigma(t)[0] == 0).any():
            raise ValueError(
                "a plain score cannot give x0 where alpha = 0 (t = T on this path); pass a "
                "function returning a Prediction, e.g. GaussianMixture.prediction_fn(path) "
                "or ScoreModel.prediction_fn()")
        return Prediction.from_score(path, x, t, out)

    model.returns_prediction = True
    return model


def prediction_fn(fn):
    """Mark ``fn(x, t) -> Prediction`` as a prediction function (no per-call type check)."""
    fn.returns_prediction = True
    return fn
