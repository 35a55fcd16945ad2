"""Guidance: ways to build a guided prediction from a conditional model (DESIGN.md §1).

Each guidance wraps ``predict(x, t, y) -> Prediction`` (``ScoreModel.prediction``, the
mixture's ``conditional_prediction_fn``) into the ``model(x, t) -> Prediction`` every sampler
takes, so it works with every sampler, SDE / path and head. With D the conditional
prediction and w the guidance scale:

* classifier-free (Ho & Salimans 2022):  D_null + w (D - D_null), D_null the prediction with
  the null label (``scorelab.models.conditioning``); one batched forward pass of both;
* autoguidance (Karras et al. 2024, EDM2): D_guide + w (D - D_guide), D_guide a weaker model
  of the same conditioning (an earlier checkpoint, a smaller network);
* classifier (Dhariwal & Nichol 2021): score + w grad_x log p(y | x_t, t) by autograd of a
  noisy classifier (also under the samplers' no-grad), read in every parametrisation through
  ``Prediction.shift_score`` (eps - w sigma grad, x0 + w sigma^2 / alpha grad, ...).

**w = 1 means no guidance**: the model's own conditional prediction (the convention of
diffusers and EDM2; papers that write (1 + w) have our w - 1). The first two act on x0_hat
and eps_hat affinely (``Prediction.guide``), hence identically for the eps, x0, v, score,
velocity and edm heads; learned-variance channels never reach a prediction (``ScoreModel``
drops them), so they are never guided.

**Guidance interval** (Kynkäänniemi et al. 2024): w applies where the noise level
s = sigma / alpha (EDM's sigma; log-SNR = -2 log s) lies in [sigma_min, sigma_max], and
w = 1 elsewhere. Given in noise level, not in step index, it means the same at any NFE;
s = inf at alpha = 0 is inside only when sigma_max = inf.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scorelab.util.checks import check_values, number
from scorelab.models.conditioning import null_like
from scorelab.models.prediction import Prediction, prediction_fn


def _predict(predict, x: Tensor, t: Tensor, y, r: Tensor | None) -> Prediction:
    """``predict(x, t, y)``, or with a two-time model's ``r`` (MeanFlow's average over
    [r, t]) ``predict(x, t, y, r=r)``: the guided functions take r through."""
    return predict(x, t, y) if r is None else predict(x, t, y, r=r)


def describe(guidance) -> dict | None:
    """A guidance's settings for result files (None: no guidance)."""
    return guidance.settings() if guidance is not None else None


def noise_level(path, t: Tensor) -> Tensor:
    """EDM's noise level s = sigma(t) / alpha(t) [B] (inf where alpha = 0)."""
    alpha, sigma = path.alpha_sigma(t)
    return sigma / alpha


class Guidance:
    """Scale and interval shared by every guidance.

    Args:
        scale: guidance scale w (1: no guidance).
        sigma_min, sigma_max: the noise-level interval s = sigma / alpha where w applies.
    """

    kind = "none"

    def __init__(self, scale: float = 1.0, sigma_min: float = 0.0,
                 sigma_max: float = math.inf):
        check_values("guidance", {"scale": scale, "sigma_min": sigma_min,
                                  "sigma_max": sigma_max},
                     {"scale": number(0), "sigma_min": number(0), "sigma_max": number(0)})
        if sigma_min > sigma_max:
            raise ValueError(f"guidance.sigma_min, sigma_max: need sigma_min <= sigma_max, "
                             f"got [{sigma_min}, {sigma_max}]")
        self.scale, self.sigma_min, self.sigma_max = float(scale), float(sigma_min), \
            float(sigma_max)

    def weight(self, path, t: Tensor) -> Tensor:
        """w [B] at times t: ``scale`` inside the noise-level interval, 1 outside."""
        s = noise_level(path, t)
        inside = (s >= self.sigma_min) & (s <= self.sigma_max)
        return torch.where(inside, torch.full_like(s, self.scale), torch.ones_like(s))

    @property
    def everywhere(self) -> bool:
        """Whether the interval is every noise level (w is then ``scale`` at every step)."""
        return self.sigma_min == 0 and self.sigma_max == math.inf

    def _differs(self, w: Tensor, value: float) -> bool:
        """Whether w != value anywhere: decided on the host without the interval; with one,
        one host read per step, which saves the guiding evaluation where w = value."""
        if self.everywhere:
            return self.scale != value
        return self.scale != value and bool((w != value).any())

    def _active(self, w: Tensor) -> bool:
        return self._differs(w, 1.0)

    def needs_labels(self) -> bool:
        return False

    def to(self, device) -> "Guidance":
        return self

    def prediction_fn(self, predict, path, y: Tensor | None, conditional: bool = True):
        """``model(x, t) -> Prediction``: ``predict(x, t, y)``, guided towards labels y.
        ``conditional``: whether ``predict`` takes the labels (else it gets None)."""
        labels = y if conditional else None
        return prediction_fn(lambda x, t, r=None: _predict(predict, x, t, labels, r))

    def settings(self) -> dict:
        return {"name": self.kind, "scale": self.scale, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max}

    def __repr__(self):
        return f"{type(self).__name__}({self.settings()})"


class NoGuidance(Guidance):
    """The model's own (conditional or unconditional) prediction."""

    def __init__(self):
        super().__init__(1.0)


class ClassifierFree(Guidance):
    """D_null + w (D - D_null) in one batched forward pass of [x, x] with labels [y, null]."""

    kind = "cfg"

    def needs_labels(self) -> bool:
        return True

    def prediction_fn(self, predict, path, y, conditional: bool = True):
        if y is None or not conditional:
            raise ValueError("classifier-free guidance needs a conditional model and class labels")

        both_labels = torch.cat([y, null_like(y)])          # once, not per step

        def model(x: Tensor, t: Tensor, r: Tensor | None = None) -> Prediction:
            # (r: a two-time model's average over [r, t], guided by the same affine rule)
            w = self.weight(path, t)
            if not self._active(w):
                return _predict(predict, x, t, y, r)
            both = _predict(predict, torch.cat([x, x]), torch.cat([t, t]), both_labels,
                            None if r is None else torch.cat([r, r]))
            cond, uncond = both.chunk(2)
            return cond.guide(uncond, w)
        return prediction_fn(model)


class Autoguidance(Guidance):
    """D_guide + w (D - D_guide) with ``guide(x, t, y) -> Prediction`` a weaker model trained
    on the same path and conditioning.

    Args:
        guide: the guiding model's ``predict(x, t, y)``; ``.to(device)`` is forwarded to
            ``guide_module`` if given.
    """

    kind = "autoguidance"

    def __init__(self, guide, scale: float = 1.0, sigma_min: float = 0.0,
                 sigma_max: float = math.inf, guide_module=None):
        super().__init__(scale, sigma_min, sigma_max)
        self.guide, self.guide_module = guide, guide_module

    def to(self, device):
        if self.guide_module is not None:
            self.guide_module.to(device)
        return self

    def prediction_fn(self, predict, path, y, conditional: bool = True):
        labels = y if conditional else None

        def model(x: Tensor, t: Tensor, r: Tensor | None = None) -> Prediction:
            pred = _predict(predict, x, t, labels, r)
            w = self.weight(path, t)
            if not self._active(w):
                return pred
            return pred.guide(_predict(self.guide, x, t, labels, r), w)
        return prediction_fn(model)


class ClassifierGuidance(Guidance):
    """Samples p(x) p(y | x)^w with ``classifier(x, t) -> logits [B, K]``, a noisy
    classifier on the same path: an unconditional base model's score + w grad log p(y | x_t),
    or a conditional one's + (w - 1) grad (p(x | y) p(y | x)^(w-1) is the same density).
    So w = 1 is p(x | y) -- exactly, with an exact classifier -- as for the other guidance.

    Args:
        classifier: ``classifier(x, t) -> logits``; ``.to(device)`` is forwarded to
            ``classifier_module`` if given.
    """

    kind = "classifier"

    def __init__(self, classifier, scale: float = 1.0, sigma_min: float = 0.0,
                 sigma_max: float = math.inf, classifier_module=None):
        super().__init__(scale, sigma_min, sigma_max)
        self.classifier, self.classifier_module = classifier, classifier_module

    def needs_labels(self) -> bool:
        return True

    def to(self, device):
        if self.classifier_module is not None:
            self.classifier_module.to(device)
        return self

    def log_prob_grad(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """grad_x log p(y | x, t) by autograd, also inside ``torch.no_grad``."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = torch.log_softmax(self.classifier(xg, t).float(), dim=-1)
            picked = logp.gather(1, y.long()[:, None]).sum()
            return torch.autograd.grad(picked, xg)[0].to(x.dtype)

    def prediction_fn(self, predict, path, y, conditional: bool = False):
        if y is None:
            raise ValueError("classifier guidance needs class labels to guide towards")
        base_labels = y if conditional else None
        offset = 1.0 if conditional else 0.0

        def model(x: Tensor, t: Tensor, r: Tensor | None = None) -> Prediction:
            if r is not None:
                raise ValueError("classifier guidance shifts a score at one time; an average "
                                 "velocity over [r, t] has none (guidance=cfg guides it)")
            pred = predict(x, t, base_labels)
            w = self.weight(path, t)
            if not self._differs(w, offset):
                return pred
            w = w - offset
            grad = self.log_prob_grad(x, t, y)
            return pred.shift_score(w.reshape((-1,) + (1,) * (x.dim() - 1)) * grad)
        return prediction_fn(model)
