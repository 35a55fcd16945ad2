"""Building blocks shared by the backbones."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorelab.models.conditioning import NULL_LABEL


def sinusoidal_embedding(label: Tensor, dim: int, max_period: float = 10000.0,
                         ddpm: bool = False) -> Tensor:
    """Transformer positional embedding of a (real-valued) noise label.

    Default (DiT, ADM): [cos(label w_j), sin(label w_j)], w_j = max_period^(-j / half).
    ``ddpm=True`` (Ho et al. 2020; Score SDE's DDPM/NCSN++): [sin, cos] and
    w_j = max_period^(-j / (half - 1)), so the last frequency is exactly 1/max_period.
    """
    half = dim // 2
    denom = max(half - 1, 1) if ddpm else half
    # (at least float32 whatever the autocast: a label of 999 t in bf16 is off by ~4)
    dtype = torch.promote_types(label.dtype, torch.float32)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=label.device,
                                                          dtype=dtype) / denom)
    args = label.to(dtype)[:, None] * freqs[None]
    parts = [torch.sin(args), torch.cos(args)] if ddpm else [torch.cos(args), torch.sin(args)]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class ClassEmbedding(nn.Embedding):
    """Class labels [B] -> [B, dim], with row ``num_classes`` the null label
    (``scorelab.models.conditioning``): ``y=None`` or ``y == NULL_LABEL`` selects it. Every
    conditional backbone embeds its labels through this one module."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__(num_classes + 1, dim)
        self.num_classes = num_classes

    def forward(self, y: Tensor | None, batch: int | None = None, device=None) -> Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        else:
            y = torch.where(y == NULL_LABEL, self.num_classes, y.long())
        return super().forward(y)


def class_embedding(num_classes: int, dim: int) -> ClassEmbedding | None:
    """A ``ClassEmbedding``, or None for an unconditional backbone (num_classes = 0)."""
    return ClassEmbedding(num_classes, dim) if num_classes > 0 else None


class ConditionEmbedding(nn.Module):
    """Noise-label embedding (sinusoidal -> MLP) plus an optional class embedding
    (``ClassEmbedding``: y None or ``NULL_LABEL`` is the null label).

    Args:
        dim: output width.
        num_classes: number of classes; 0 for an unconditional model.
        freq_dim: width of the sinusoidal features.
    """

    def __init__(self, dim: int, num_classes: int = 0, freq_dim: int | None = None):
        super().__init__()
        self.freq_dim = freq_dim or dim
        self.num_classes = num_classes
        self.mlp = nn.Sequential(nn.Linear(self.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label_emb = class_embedding(num_classes, dim)

    def forward(self, noise_label: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.mlp(sinusoidal_embedding(noise_label, self.freq_dim))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y, noise_label.shape[0], noise_label.device)
        return emb


class IntervalEmbedding(nn.Module):
    """The second time of a two-time backbone (MeanFlow's average velocity u(z, r, t), Geng
    et al. 2025, Sec. 4.3: the pair enters as (t, t - r)): the label of the interval t - r,
    sinusoidal -> Linear-SiLU-Linear, added to the noise embedding. The last layer starts at
    zero, so a fresh one leaves the backbone as it was: a flow model fine-tuned into a
    two-time model starts as itself at every r.

    Args:
        dim: output width (the backbone's embedding width).
        freq_dim: width of the sinusoidal features.
        ddpm: DDPM's sinusoidal variant (the UNet's), else DiT's.
    """

    def __init__(self, dim: int, freq_dim: int, ddpm: bool = False):
        super().__init__()
        self.freq_dim, self.ddpm = freq_dim, ddpm
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(),
                                 zero_init(nn.Linear(dim, dim)))

    def forward(self, interval: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(interval, self.freq_dim, ddpm=self.ddpm))


def interval_embedding(enabled: bool, dim: int, freq_dim: int,
                       ddpm: bool = False) -> IntervalEmbedding | None:
    """An ``IntervalEmbedding`` for a two-time backbone (``interval=true``), else None."""
    return IntervalEmbedding(dim, freq_dim, ddpm) if enabled else None


def add_interval(emb: Tensor, embed: IntervalEmbedding | None,
                 interval: Tensor | None) -> Tensor:
    """The noise embedding plus the interval's (none given: r = t, the interval 0, whose
    embedding is added too, so u(z, t, t) is the same network at any call)."""
    if embed is None:
        if interval is not None:
            raise ValueError("this backbone takes one time (backbone.interval=false); a "
                             "second time (MeanFlow's r) needs backbone.interval=true")
        return emb
    if interval is None:
        interval = torch.zeros(emb.shape[0], device=emb.device, dtype=emb.dtype)
    return emb + embed(interval)


def sincos_2d(dim: int, h: int, w: int) -> Tensor:
    """Fixed 2-D sin-cos position table [h*w, dim] (MAE / DiT): half the channels encode the
    row, half the column, each with 1-D embeddings at frequencies 10000^(-j / (dim/4))."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def one_axis(pos):
        out = pos.flatten()[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.cat([one_axis(gx), one_axis(gy)], dim=1).float()


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels (DDPM uses 32 groups)."""
    groups = next(g for g in range(min(32, max(1, channels // 4)), 0, -1) if channels % g == 0)
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def variance_scaling_(module: nn.Module, scale: float = 1.0) -> nn.Module:
    """DDPM's default initialiser (TF ``variance_scaling``, fan_avg, uniform) for a Conv or
    Linear weight, zero bias: W ~ U(-a, a), a = sqrt(3 scale / ((fan_in + fan_out) / 2)).
    scale = 0 gives exact zeros (Score SDE's ``init_scale=0.``, which it rounds to 1e-10)."""
    w = module.weight
    receptive = w[0, 0].numel() if w.dim() > 2 else 1
    fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2))
    with torch.no_grad():
        w.uniform_(-bound, bound) if scale > 0 else w.zero_()
        if module.bias is not None:
            module.bias.zero_()
    return module
