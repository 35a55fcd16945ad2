"""A compact UNet of the DDPM family (Ho et al. 2020, Appendix B) for small images.

Residual blocks with the noise embedding added after the first convolution, self-attention
(through ``scaled_dot_product_attention``) at chosen resolutions, skip connections
concatenated in the decoder, zero-initialised output convolution. The paper-scale DDPM++ /
NCSN++ family is a separate, larger module; this one keeps the same interface
``forward(x, noise_label, y=None)`` and knows nothing of SDEs or heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorelab.nets.layers import ConditionEmbedding, group_norm, zero_init


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0,
                 skip_rescale: bool = False):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = group_norm(cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return (self.skip(x) + h) * self.scale


class Attention(nn.Module):
    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: {channels} channels not divisible by {heads} heads")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))   # [B, heads, HW, C/heads]
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    """Args:
        data_shape: (C, H, W) of one image; H and W divisible by 2^(len(channel_mult)-1).
        channels: base width.
        channel_mult: width multiplier per resolution level.
        num_res_blocks: residual blocks per level in the encoder (decoder has one more).
        attn_resolutions: spatial sizes (e.g. [7]) at which self-attention is applied.
        dropout: dropout inside the residual blocks.
        num_classes: 0 for unconditional, else the number of classes (+1 null label).
        skip_rescale: scale residual sums by 1/sqrt(2) (DDPM++).
        attn_heads: heads of the attention layers.
    """

    def __init__(self, data_shape, channels: int = 32, channel_mult=(1, 2, 2),
                 num_res_blocks: int = 1, attn_resolutions=(7,), dropout: float = 0.0,
                 num_classes: int = 0, skip_rescale: bool = False, attn_heads: int = 1):
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"backbone=unet needs image data shaped (C, H, W); got data "
                             f"shape {tuple(data_shape)} — use backbone=mlp for vector data")
        cin, H, W = data_shape
        factor = 2 ** (len(channel_mult) - 1)
        if H % factor or W % factor:
            raise ValueError(f"backbone=unet with {len(channel_mult)} levels needs image sides "
                             f"divisible by {factor}; got {H}x{W} (change channel_mult)")
        self.data_shape = tuple(data_shape)
        emb_dim = 4 * channels
        self.embed = ConditionEmbedding(emb_dim, num_classes, freq_dim=channels)
        self.conv_in = nn.Conv2d(cin, channels, 3, padding=1)
        attn = set(int(r) for r in attn_resolutions)

        def block(a, b):
            return ResBlock(a, b, emb_dim, dropout, skip_rescale)

        self.down = nn.ModuleList()
        skips, ch, res = [channels], channels, H
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [block(ch, channels * mult)]
                ch = channels * mult
                if res in attn:
                    layers.append(Attention(ch, attn_heads))
                self.down.append(nn.ModuleList(layers))
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([block(ch, ch), Attention(ch, attn_heads), block(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                layers = [block(ch + skips.pop(), channels * mult)]
                ch = channels * mult
                if res in attn:
                    layers.append(Attention(ch, attn_heads))
                self.up.append(nn.ModuleList(layers))
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(ch, ch, 3, padding=1)]))
                res *= 2
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(),
                                 zero_init(nn.Conv2d(ch, cin, 3, padding=1)))

    @staticmethod
    def _run(layers: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for layer in layers:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: Tensor, noise_label: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.embed(noise_label, y)                  # [B, 4 ch]
        h = self.conv_in(x)                               # [B, ch, H, W]
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)                   # [B, ch_max, H/f, W/f]
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layers, h, emb)
        return self.out(h)                                # [B, C, H, W]
