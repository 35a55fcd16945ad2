"""ScoreModel = backbone + head + SDE: the one object that turns a network into a score_fn.

    label   = sde.noise_label(t)                       (the only place it is computed)
    x_in    = x / sqrt(alpha(t)^2 + sigma(t)^2)        (input scaling, optional)
    out     = backbone(x_in, label, y)[:, :C]       (DiT with learned sigma: mean part)
    out     = out / sigma(t)                        (backbone.scale_by_sigma: NCSN++ on VE)
    score   = head.to_score(out, x, alpha(t), sigma(t))

The input scaling is EDM's c_in (Karras et al. 2022, Table 1) with sigma_data = 1, written for
any alpha: it is exactly 1 on VP and keeps the backbone's input at unit scale on VE, where
x_t has std up to sigma_max.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scorelab.heads import Head
from scorelab.sde import SDE, _bcast


class ScoreModel(nn.Module):
    """Args:
        backbone: an ``nn.Module`` with ``forward(x, noise_label, y=None)`` returning x's shape
            (2C channels when its ``learn_sigma`` is set; optional ``scale_by_sigma`` flag).
        head: a ``scorelab.heads.Head`` saying what the backbone's output means.
        sde: the forward SDE whose marginals the model is trained on.
        input_scaling: divide the input by sqrt(alpha^2 + sigma^2) before the backbone.
    """

    def __init__(self, backbone: nn.Module, head: Head, sde: SDE, input_scaling: bool = True):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.sde = sde
        self.input_scaling = input_scaling

    def coefficients(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t), sigma(t) broadcast against x."""
        alpha, sigma = self.sde.alpha_sigma(t)
        return _bcast(alpha, x).to(x.dtype), _bcast(sigma, x).to(x.dtype)

    def output(self, x: Tensor, t: Tensor, y: Tensor | None = None,
               coefficients: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The backbone's raw output (what the head's target is compared with).
        ``coefficients``: (alpha, sigma) already broadcast against x, if the caller has them."""
        alpha, sigma = coefficients if coefficients is not None else self.coefficients(x, t)
        x_in = x * torch.rsqrt(alpha * alpha + sigma * sigma) if self.input_scaling else x
        out = self.backbone(x_in, self.sde.noise_label(t), y)
        if getattr(self.backbone, "learn_sigma", False):
            out = out[:, :x.shape[1]]
        if getattr(self.backbone, "scale_by_sigma", False):
            out = out / sigma
        return out

    def _evaluate(self, x, t, y):
        alpha, sigma = self.coefficients(x, t)
        return self.output(x, t, y, (alpha, sigma)), alpha, sigma

    def score_fn(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        out, alpha, sigma = self._evaluate(x, t, y)
        return self.head.to_score(out, x, alpha, sigma)

    def eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        out, alpha, sigma = self._evaluate(x, t, y)
        return self.head.to_eps(out, x, alpha, sigma)

    def x0(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        out, alpha, sigma = self._evaluate(x, t, y)
        return self.head.to_x0(out, x, alpha, sigma)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.score_fn(x, t, y)

    def conditional_score_fn(self, y: Tensor | None = None):
        """A plain ``score_fn(x, t)`` for the samplers, with the class labels bound."""
        return lambda x, t: self.score_fn(x, t, y)
