"""2x up- and down-sampling for the UNet: naive (nearest / box) or with an FIR kernel.

FIR resampling (StyleGAN2's ``upfirdn2d``, used by NCSN++ with kernel [1, 3, 3, 1]):

    up:   y = (zero-insert(x, 2) * K) with K = 4 k k^T / (sum k)^2   (gain 4 keeps the mean)
    down: y = (x * K)[::2, ::2]   with K = k k^T / (sum k)^2

with zero padding so that the output has exactly twice / half the input's size. The
convolutional variants (``with_conv``) follow the filter with a 3x3 convolution, which is
how NCSN++'s ``Upsample``/``Downsample`` spend their parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorelab.nets.layers import variance_scaling_


def _fir_kernel(kernel, gain: float, like: Tensor) -> Tensor:
    k = torch.as_tensor(kernel, dtype=like.dtype, device=like.device)
    k2 = torch.outer(k, k)
    return k2 * (gain / k2.sum())


def fir_filter(x: Tensor, kernel, up: int = 1, down: int = 1) -> Tensor:
    """upfirdn2d for a separable, symmetric kernel and factor up or down = 2 (or 1)."""
    B, C, H, W = x.shape
    factor = max(up, down)
    k2 = _fir_kernel(kernel, float(up * up), x)
    p = k2.shape[-1] - factor
    if up > 1:
        # Zero insertion: each pixel followed by (up - 1) zeros in both directions.
        z = x.new_zeros(B, C, H, up, W, up)
        z[:, :, :, 0, :, 0] = x
        x = z.view(B, C, H * up, W * up)
        pad = ((p + 1) // 2 + factor - 1, p // 2)
    else:
        pad = ((p + 1) // 2, p // 2)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = k2.flip(0, 1)[None, None].expand(C, 1, *k2.shape).contiguous()
    return F.conv2d(x, weight, stride=down, groups=C)


def upsample(x: Tensor, fir: bool = False, kernel=(1, 3, 3, 1)) -> Tensor:
    return fir_filter(x, kernel, up=2) if fir else F.interpolate(x, scale_factor=2.0,
                                                                 mode="nearest")


def downsample(x: Tensor, fir: bool = False, kernel=(1, 3, 3, 1)) -> Tensor:
    return fir_filter(x, kernel, down=2) if fir else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """2x upsampling, optionally followed by a 3x3 convolution in_ch -> out_ch."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = True,
                 fir: bool = False, kernel=(1, 3, 3, 1)):
        super().__init__()
        self.fir, self.kernel = fir, tuple(kernel)
        self.conv = variance_scaling_(nn.Conv2d(in_ch, out_ch or in_ch, 3, padding=1)) \
            if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        h = upsample(x, self.fir, self.kernel)
        return self.conv(h) if self.conv is not None else h


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 convolution (after the FIR blur when ``fir``), or
    without ``with_conv`` a box / FIR filter."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = True,
                 fir: bool = False, kernel=(1, 3, 3, 1)):
        super().__init__()
        self.fir, self.kernel = fir, tuple(kernel)
        self.conv = variance_scaling_(nn.Conv2d(in_ch, out_ch or in_ch, 3, stride=2,
                                                padding=1)) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return downsample(x, self.fir, self.kernel)
        if self.fir:
            x = fir_filter(x, self.kernel)       # blur at full resolution, then stride
        return self.conv(x)
