"""A residual MLP backbone for low-dimensional (toy) data."""

from __future__ import annotations

import math

from torch import Tensor, nn

from scorelab.nets.layers import ConditionEmbedding, add_interval, interval_embedding, zero_init


class _Block(nn.Module):
    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = zero_init(nn.Linear(width, width))
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.act(z))


class MLP(nn.Module):
    """Args:
        data_shape: shape of one sample, e.g. (2,); flattened internally.
        width: hidden width.
        depth: number of residual blocks.
        emb_dim: width of the noise-label (and class) embedding.
        num_classes: 0 for unconditional, else the number of classes (+1 null label).
        learn_sigma: also output Improved DDPM's variance channels (twice the data's first
            dimension: the mean part first).
        interval: also take a second time, the interval label of t - r (MeanFlow's average
            velocity; ``layers.IntervalEmbedding``).
    """

    def __init__(self, data_shape, width: int = 256, depth: int = 4, emb_dim: int = 128,
                 num_classes: int = 0, learn_sigma: bool = False,
                 interval: bool = False):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.learn_sigma = bool(learn_sigma)
        d = math.prod(self.data_shape)
        self.embed = ConditionEmbedding(emb_dim, num_classes)
        self.interval_embed = interval_embedding(interval, emb_dim, emb_dim)
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(),
                                 nn.Linear(width, 2 * d if learn_sigma else d))

    def forward(self, x: Tensor, noise_label: Tensor, y: Tensor | None = None,
                interval: Tensor | None = None) -> Tensor:
        emb = add_interval(self.embed(noise_label, y), self.interval_embed, interval)
        h = self.inp(x.flatten(1))                       # [B, width]
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(h)
        if self.learn_sigma:     # [B, 2C, ...]: the mean part, then the variance channels
            return out.view(x.shape[0], 2, *x.shape[1:]).flatten(1, 2)
        return out.view(x.shape)
