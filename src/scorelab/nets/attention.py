"""Cross-attention from image features to a condition's tokens.

    h <- h + W_o softmax(Q K^T / sqrt(d) + log mask) V,
    Q = W_q norm(h), K = W_k c, V = W_v c    (multi-head; Vaswani et al. 2017)

the block LDM puts after the self-attention of its UNet levels (Rombach et al. 2022, Sec. 3.3)
and PixArt-alpha after the self-attention of each DiT block (Chen et al. 2023, Sec. 2.3).
Pre-norm on the queries; the keys and values are the condition encoder's tokens [B, L, D_c]
with a key padding mask [B, L] (True: a real token), so padding never changes the output.
The output projection starts at zero, so a block added to a network starts as the identity
and a checkpoint without text keeps its function.

With ``position`` (feature maps), the queries also see each pixel's fixed 2-D sin-cos
position, Q = W_q (norm(h) + P): which caption word a place reads (the digit *on the left*)
is then given, not left to what zero padding leaves in a convolution's features.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorelab.nets.layers import group_norm, sincos_2d, zero_init


@lru_cache(maxsize=32)
def _grid_position(dim: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    # built once per shape and device, not at every forward; a normal tensor even when first
    # asked for under inference mode, so training may use it afterwards
    with torch.inference_mode(False):
        return sincos_2d(dim, h, w).to(device, dtype)


class CrossAttention(nn.Module):
    """Residual cross-attention of ``dim``-wide queries over ``context_dim``-wide tokens.

    Args:
        dim: width of the image features (channels of a UNet level, DiT's hidden size).
        context_dim: width of the condition tokens.
        heads: attention heads (``dim`` must divide by it).
        norm: "layer" (DiT's tokens) or "group" (a UNet's [B, C, H, W] features).
        position: add the pixels' 2-D sin-cos position to the queries of a feature map.
    """

    def __init__(self, dim: int, context_dim: int, heads: int = 4, norm: str = "layer",
                 position: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"cross-attention width {dim} not divisible by {heads} heads")
        if norm not in ("layer", "group"):
            raise ValueError(f"cross-attention norm must be layer or group, got {norm!r}")
        if position and dim % 4:
            raise ValueError(f"cross-attention position: width {dim} not divisible by 4")
        self.heads, self.position = heads, position
        self.norm = nn.LayerNorm(dim) if norm == "layer" else group_norm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.out = zero_init(nn.Linear(dim, dim))

    def forward(self, h: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        """h [B, T, dim] (tokens) or [B, dim, H, W] (a feature map); context [B, L, D_c];
        mask [B, L] bool, True where a token is real (at least one per row)."""
        image = h.dim() == 4
        if image:
            B, C, H, W = h.shape
            q_in = self.norm(h).flatten(2).transpose(1, 2)                     # [B, HW, C]
            if self.position:
                q_in = q_in + _grid_position(C, H, W, q_in.device, q_in.dtype)
        else:
            q_in = self.norm(h)
        B, T, D = q_in.shape
        L, d = context.shape[1], D // self.heads
        q = self.q(q_in).reshape(B, T, self.heads, d).transpose(1, 2)
        k, v = self.kv(context).reshape(B, L, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        # a boolean attn_mask: True = attend; broadcast over heads and queries
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :].bool())
        a = self.out(a.transpose(1, 2).reshape(B, T, D))
        if image:
            return h + a.transpose(1, 2).reshape(B, C, H, W)
        return h + a


__all__ = ["CrossAttention"]
