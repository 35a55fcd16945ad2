"""A noisy classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

    logits = net(c_in x_t, noise_label(t)),   x_t = alpha(t) x0 + sigma(t) eps,
    loss   = cross-entropy(logits, y),         t ~ U[eps, T], eps ~ N(0, I)

trained on the same SDE / path as the diffusion model it guides, and fed the same input
scaling (``heads.unit_input_scale``) and noise label (``score.noise_label``) as its backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorelab.models.heads import unit_input_scale
from scorelab.models.score import NOISE_LABELS, noise_label
from scorelab.paths.sde import ForwardPath


class NoisyClassifier(nn.Module):
    """Args:
        net: ``forward(x, noise_label) -> logits [B, K]`` (e.g. ``nets.encoder``).
        path: the path of the diffusion model it will guide.
        noise_label: the noise-label kind (``score.NOISE_LABELS``) of that model.
        input_scaling: scale the input by 1 / sqrt(alpha^2 + sigma^2).
    """

    def __init__(self, net: nn.Module, path: ForwardPath, noise_label: str = "sde",
                 input_scaling: bool = True):
        super().__init__()
        if noise_label not in NOISE_LABELS:
            raise ValueError(f"noise_label: must be one of {', '.join(NOISE_LABELS)}, got "
                             f"{noise_label!r}")
        self.backbone, self.path = net, path
        self.noise_label_kind, self.input_scaling = noise_label, input_scaling

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.path.coefficients(t, like=x)[:2]
        x_in = x * unit_input_scale(alpha, sigma) if self.input_scaling else x
        return self.backbone(x_in, noise_label(self.noise_label_kind, self.path, t, alpha, sigma))

    def metrics(self, x0: Tensor, y: Tensor, generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
        """{"loss": cross-entropy, "acc": accuracy} at uniform times in [sampling_eps, T]."""
        n = x0.shape[0]
        eps = self.path.sampling_eps
        t = eps + (self.path.T - eps) * torch.rand(n, generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        xt = self.path.interpolate(x0, noise, self.path.coefficients(t, like=x0))
        logits = self(xt, t)
        return {"loss": F.cross_entropy(logits, y),
                "acc": (logits.argmax(1) == y).float().mean()}
