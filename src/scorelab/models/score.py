"""ScoreModel = backbone + head + SDE (or path): the one object that turns a network into a
prediction (``scorelab.models.prediction``) and a score_fn.

    label   = noise_label(t)                           (the only place it is computed)
    x_in    = head.c_in(alpha, sigma) x                (input scaling, optional)
    out     = backbone(x_in, label, y)[:, :C]       (learn_sigma: the mean part; the rest is
                                                     the variance fraction (v + 1) / 2)
    out     = out / sigma(t)                        (backbone.scale_by_sigma: NCSN++ on VE)
    pred    = Prediction(x0_hat, eps_hat) via the head: read as score, x0, eps, v, velocity
              (then, if set, a consistency model's boundary and the x0 clip)

The input scaling is EDM's c_in (Karras et al. 2022, Table 1), written for any alpha: with
sigma_data = 1 (every head but edm) it is exactly 1 on VP and keeps the backbone's input at
unit scale on VE, where x_t has std up to sigma_max.

The noise label belongs to the preconditioning:

* ``"sde"`` (Score SDE): the SDE's own ``noise_label(t)``: 999 t on VP / sub-VP (the DDPM
  step index), sigma(t) on VE (NCSN++'s Fourier embedding takes its log);
* ``"time"``: 999 t on every SDE (on VE an affine function of log sigma; what checkpoints
  written before the label became a choice were trained with);
* ``"log_sigma"`` (EDM): c_noise = 1/4 log(sigma / alpha), the log of EDM's sigma, for any
  SDE. It is read off the same (alpha, sigma) the loss drew, so the discrete DDPM / SMLD
  losses label their own noise levels exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scorelab.util.checks import check_value, one_of
from scorelab.models.heads import Head
from scorelab.models.prediction import Prediction, prediction_fn
from scorelab.paths.sde import ForwardPath

NOISE_LABELS = ("sde", "time", "log_sigma")


def noise_label(kind: str, path: ForwardPath, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The noise label [B] of kind ``kind`` (``NOISE_LABELS``) at times t [B]; alpha, sigma
    broadcast against the data or shaped like t. Every network conditioned on the noise
    level (the diffusion backbone, a noisy classifier) is labelled by this function."""
    if kind == "sde":
        return path.noise_label(t)
    if kind == "time":
        return path.time_label(t)
    a, s = alpha.reshape(alpha.shape[0], -1)[:, 0], sigma.reshape(sigma.shape[0], -1)[:, 0]
    return 0.25 * (torch.log(s) - torch.log(a))


class ScoreModel(nn.Module):
    """Args:
        backbone: an ``nn.Module`` with ``forward(x, noise_label, y=None)`` returning x's shape
            (2C channels when its ``learn_sigma`` is set; optional ``scale_by_sigma`` flag).
        head: a ``scorelab.models.heads.Head`` saying what the backbone's output means.
        path: the forward path whose marginals the model is trained on.
        input_scaling: multiply the input by the head's c_in before the backbone.
        noise_label: ``"sde"`` (Score SDE's label), ``"time"`` (999 t) or ``"log_sigma"``
            (EDM's c_noise).
        boundary: a consistency model's ``models.consistency.Boundary``: every prediction
            is then the consistency function's (None: the head's own).
        x0_clip: clamp every prediction's x0_hat to [-x0_clip, x0_clip], eps_hat re-derived
            (``Prediction.clip_x0``; DDPM's ``clip_denoised``); None: no clipping.
    """

    def __init__(self, backbone: nn.Module, head: Head, path: ForwardPath,
                 input_scaling: bool = True,
                 noise_label: str = "sde", boundary=None, x0_clip: float | None = None):
        super().__init__()
        check_value("noise_label", noise_label, one_of(NOISE_LABELS, "noise label"))
        if path.alpha_vanishes:
            if not head.x0_at_pure_noise:
                raise ValueError(
                    f"the {head.name} head cannot give x0 where alpha = 0, and "
                    f"{type(path).__name__} has alpha(T) = 0, where every sampler starts (the "
                    f"velocity, v, x0 and edm heads can)")
            if noise_label == "log_sigma":
                raise ValueError(
                    f"the log_sigma noise label is log(sigma / alpha) / 4 = +inf at t = T on "
                    f"{type(path).__name__} (alpha(T) = 0); the sde and time labels are "
                    f"finite there")
        self.backbone = backbone
        self.head = head
        self.path = path
        self.input_scaling = input_scaling
        self.noise_label_kind = noise_label
        self.boundary = boundary
        if x0_clip is not None and not x0_clip > 0:
            raise ValueError(f"x0_clip must be > 0 (or None: no clipping), got {x0_clip}")
        self.x0_clip = None if x0_clip is None else float(x0_clip)

    def noise_label(self, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The backbone's conditioning label [B] at times t [B] (alpha, sigma broadcast
        against the data or shaped like t)."""
        return noise_label(self.noise_label_kind, self.path, t, alpha, sigma)

    def coefficients(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """alpha(t), sigma(t), alpha'(t), sigma'(t) broadcast against x."""
        return self.path.coefficients(t, like=x)

    def outputs(self, x: Tensor, t: Tensor, y: Tensor | None = None,
                coefficients: tuple[Tensor, ...] | None = None,
                r: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The backbone's raw output (what the head's target is compared with) and, for a
        backbone with ``learn_sigma``, Improved DDPM's variance fraction (v + 1) / 2 of its
        last C channels (None otherwise). ``coefficients``: (alpha, sigma, ...) broadcast
        against x, if the caller has them. ``r`` [B] (a two-time backbone, ``interval``):
        the interval's other end, labelled label(t) - label(r) (MeanFlow's (t, t - r)); None
        is r = t."""
        alpha, sigma = (coefficients if coefficients is not None else self.coefficients(x, t))[:2]
        x_in = x * self.head.c_in(alpha, sigma) if self.input_scaling else x
        label = self.noise_label(t, alpha, sigma).to(x.dtype)
        if r is None:
            out = self.backbone(x_in, label, y)
        else:
            if not self.takes_interval:
                raise ValueError("this model takes one time: an average over [r, t] needs a "
                                 "two-time backbone (backbone.interval=true, loss=meanflow)")
            ar, sr = self.path.alpha_sigma(r)
            interval = label - self.noise_label(r, ar, sr).to(x.dtype)
            out = self.backbone(x_in, label, y, interval=interval)
        var_frac = None
        if self.learns_variance:
            out, var_frac = out[:, :x.shape[1]], (out[:, x.shape[1]:] + 1) / 2
        if getattr(self.backbone, "scale_by_sigma", False):
            out = out / sigma
        return out, var_frac

    @property
    def takes_interval(self) -> bool:
        """Whether the backbone takes the second time (MeanFlow's r)."""
        return getattr(self.backbone, "interval_embed", None) is not None

    @property
    def learns_variance(self) -> bool:
        """Whether the backbone outputs the learned-variance channels."""
        return bool(getattr(self.backbone, "learn_sigma", False))

    def output(self, x: Tensor, t: Tensor, y: Tensor | None = None,
               coefficients: tuple[Tensor, ...] | None = None) -> Tensor:
        """The backbone's raw output (``outputs`` without the variance fraction)."""
        return self.outputs(x, t, y, coefficients)[0]

    def prediction(self, x: Tensor, t: Tensor, y: Tensor | None = None,
                   r: Tensor | None = None) -> Prediction:
        """The model's prediction at (x, t): x0_hat and eps_hat through the head, readable as
        score, v or velocity (``scorelab.models.prediction``), with the learned variance
        fraction if the backbone has one. With ``r`` (a two-time model) the head reads the
        average velocity over [r, t] (MeanFlow): its ``velocity`` is u(x, r, t), and
        x - (t - r) u is the jump to r."""
        c = self.coefficients(x, t)
        out, var_frac = self.outputs(x, t, y, c, r)
        pred = Prediction.from_head(self.head, out, x, c, var_frac)
        if self.boundary is not None:
            pred = self.boundary.apply(pred)
        return pred if self.x0_clip is None else pred.clip_x0(self.x0_clip)

    @property
    def _transformed(self) -> bool:
        """Whether predictions are more than the head's reading (boundary, clipping), so
        that the score / eps / x0 shortcuts must go through ``prediction``."""
        return self.boundary is not None or self.x0_clip is not None

    def score_fn(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if self._transformed:
            return self.prediction(x, t, y).score
        c = self.coefficients(x, t)
        return self.head.to_score(self.output(x, t, y, c), x, *c)

    def eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if self._transformed:
            return self.prediction(x, t, y).eps
        c = self.coefficients(x, t)
        return self.head.to_eps(self.output(x, t, y, c), x, *c)

    def x0(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if self._transformed:
            return self.prediction(x, t, y).x0
        c = self.coefficients(x, t)
        return self.head.to_x0(self.output(x, t, y, c), x, *c)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.score_fn(x, t, y)

    def conditional_score_fn(self, y: Tensor | None = None):
        """A plain ``score_fn(x, t)``, with the class labels bound."""
        return lambda x, t: self.score_fn(x, t, y)

    def prediction_fn(self, y: Tensor | None = None):
        """``model(x, t) -> Prediction`` for the samplers and the likelihood, labels bound
        (``model(x, t, r=r)``: the average over [r, t] of a two-time model)."""
        return prediction_fn(lambda x, t, r=None: self.prediction(x, t, y, r))
