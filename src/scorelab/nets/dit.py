"""Diffusion Transformer with adaLN-Zero blocks (Peebles & Xie 2023, Sec. 3.2).

    tokens  = PatchEmbed(x) + pos            x: [B, C, H, W] -> [B, T, D], T = HW / p^2
    c       = TimestepEmbed(label) + LabelEmbed(y)
    block:  shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))   (zero-init)
            h = h + gate1 * Attn(LN(h) * (1 + scale1) + shift1)
            h = h + gate2 * MLP(LN(h) * (1 + scale2) + shift2)
    out     = Linear(LN(h) * (1 + scale) + shift) -> unpatchify   (zero-init final layer)

With ``text`` (a caption's token ids as y), a ``TextEncoder`` turns the ids into tokens and a
pooled vector: each block cross-attends to the tokens after its self-attention (PixArt-alpha,
Chen et al. 2023, Sec. 2.3) and the pooled vector joins c; both start at zero, so the text
network starts as the unconditional one. y = None is the empty caption.

The position embedding is the fixed 2-D sin-cos table (a frozen parameter, not trained).
With ``learn_sigma`` the output has 2C channels (DiT's learned-variance interpolation
v); ``ScoreModel`` hands the first C to the head. The network knows nothing of SDEs or heads.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from scorelab.models.text import null_captions
from scorelab.models.text_encoders import build_text_encoder, encode_text
from scorelab.nets.attention import CrossAttention
from scorelab.nets.layers import (add_interval, class_embedding, interval_embedding, sincos_2d,
                                  sinusoidal_embedding, zero_init)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"DiT hidden size {dim} not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])   # [B, heads, T, D/heads]
        return self.proj(h.transpose(1, 2).reshape(B, T, D))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, context_dim: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.cross = CrossAttention(dim, context_dim, heads) if context_dim else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, tokens: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None:
            x = self.cross(x, tokens, mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Args:
        data_shape: (C, H, W) of one input (pixels or latents); H, W divisible by ``patch``.
        patch: patch size p.
        hidden: token width D.
        depth: number of DiT blocks.
        heads: attention heads.
        mlp_ratio: MLP width / D.
        num_classes: 0 for unconditional, else the number of classes (+1 null label).
        learn_sigma: output 2C channels (mean-side C first, then DiT's variance channels).
        freq_dim: width of the sinusoidal noise-label features.
        text: text encoder options (``build_text_encoder``: a ``TextEncoder``'s vocab_size,
            context, dim, depth, heads, or kind=clip and a ``ClipTextEncoder``'s) for captions
            as y; None (default) for none.
        interval: also take a second time, the interval label of t - r (MeanFlow's average
            velocity; ``layers.IntervalEmbedding``, zero at initialisation).
    """

    def __init__(self, data_shape, patch: int = 2, hidden: int = 384, depth: int = 12,
                 heads: int = 6, mlp_ratio: float = 4.0, num_classes: int = 0,
                 learn_sigma: bool = False, freq_dim: int = 256, text: dict | None = None,
                 interval: bool = False):
        super().__init__()
        if text and num_classes:
            raise ValueError("DiT conditions on class labels or on text, not both")
        if len(data_shape) != 3:
            raise ValueError(f"DiT needs image-like data shaped (C, H, W); got "
                             f"{tuple(data_shape)} (the MLP takes vector data)")
        C, H, W = (int(s) for s in data_shape)
        if H % patch or W % patch:
            raise ValueError(f"DiT with patch={patch} needs sides divisible by {patch}; got "
                             f"{H}x{W}")
        self.data_shape = (C, H, W)
        self.patch, self.hidden, self.freq_dim = patch, hidden, freq_dim
        self.num_classes, self.learn_sigma = num_classes, bool(learn_sigma)
        self.out_channels = 2 * C if learn_sigma else C
        self.grid = (H // patch, W // patch)
        self.patch_embed = nn.Conv2d(C, hidden, patch, stride=patch)
        # A frozen parameter, as in DiT (so parameter counts match the paper's).
        self.pos = nn.Parameter(sincos_2d(hidden, *self.grid)[None], requires_grad=False)
        self.t_embed = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(),
                                     nn.Linear(hidden, hidden))
        self.y_embed = class_embedding(num_classes, hidden)
        self.interval_embed = interval_embedding(interval, hidden, freq_dim)
        self.text = build_text_encoder(text) if text else None
        context_dim = self.text.dim if self.text is not None else 0
        self.text_proj = nn.Linear(context_dim, hidden) if context_dim else None
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, context_dim)
                                    for _ in range(depth))
        self.final = FinalLayer(hidden, patch, self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            # (a frozen pretrained text encoder keeps its weights)
            if isinstance(m, nn.Linear) and m.weight.requires_grad:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.t_embed[0], self.t_embed[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.weight, std=0.02)
        if self.interval_embed is not None:     # as the time's, and silent at the start
            nn.init.normal_(self.interval_embed.mlp[0].weight, std=0.02)
            zero_init(self.interval_embed.mlp[2])
        # adaLN-Zero: every block starts as the identity, the output as zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN[-1].weight)
            nn.init.zeros_(block.adaLN[-1].bias)
        for layer in (self.final.adaLN[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        # text starts silent: the cross-attention outputs and the pooled projection at zero
        if self.text is not None:
            zero_init(self.text_proj)
            for block in self.blocks:
                zero_init(block.cross.out)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """[B, T, p*p*C_out] -> [B, C_out, H, W]."""
        B, p, (gh, gw) = tokens.shape[0], self.patch, self.grid
        x = tokens.reshape(B, gh, gw, p, p, self.out_channels)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(B, self.out_channels, gh * p, gw * p)

    def forward(self, x: Tensor, noise_label: Tensor, y: Tensor | None = None,
                interval: Tensor | None = None) -> Tensor:
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos   # [B, T, D]
        c = add_interval(self.t_embed(sinusoidal_embedding(noise_label, self.freq_dim)),
                         self.interval_embed, interval)
        if self.y_embed is not None:
            c = c + self.y_embed(y, x.shape[0], x.device)               # [B, D]
        tokens = mask = None
        if self.text is not None:
            ids = null_captions(x.shape[0], self.text.context, x.device) if y is None else y
            tokens, mask, pooled = encode_text(self.text, ids)
            c = c + self.text_proj(pooled)
        for block in self.blocks:
            h = block(h, c, tokens, mask)
        return self.unpatchify(self.final(h, c))                        # [B, C_out, H, W]

