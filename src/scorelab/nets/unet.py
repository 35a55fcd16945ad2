"""The DDPM / DDPM++ / NCSN++ UNet family (Ho et al. 2020; Song et al. 2021, Appendix H).

One configurable network covers the Score SDE paper's CIFAR-10 models:

* DDPM:    ``resblock="ddpm"``, positional embedding, 2 blocks per level.
* DDPM++:  ``resblock="biggan"`` (resampling inside residual blocks), ``skip_rescale``,
           ``init_scale=0``, 4 (deep: 8) blocks per level.
* NCSN++:  DDPM++ plus FIR resampling, ``progressive_input="residual"`` and a random-Fourier
           embedding of log(noise label).

Layout per resolution level (encoder): ``num_res_blocks`` residual blocks, each followed by
self-attention at ``attn_resolutions``; then downsampling (a strided conv, or a residual block
with ``down=True`` for BigGAN blocks) and the optional progressive-input branch. Middle:
block, attention, block. Decoder: ``num_res_blocks + 1`` blocks on the concatenated skips,
one attention layer per level, the optional progressive-output branch, upsampling.

Residual blocks add Dense(act(emb)) after the first convolution; with ``skip_rescale`` every
residual sum is divided by sqrt(2). Class labels (``num_classes > 0``) are embedded and added
to the noise embedding through ``ClassEmbedding``, which owns the null label
(``scorelab.models.conditioning``). The network knows nothing of SDEs or heads; the
optional division of the output by sigma (``scale_by_sigma``, NCSN++ on VE) is applied by
``ScoreModel``, which knows sigma(t).

With ``text`` (a caption's token ids as y), a ``TextEncoder`` turns the ids into tokens and a
pooled vector: cross-attention to the tokens follows the self-attention at
``cross_attention_resolutions`` (default: the attention resolutions) and in the middle, as in
LDM's UNet (Rombach et al. 2022, Sec. 3.3), and the pooled vector joins the noise embedding;
both start at zero. y = None is the empty caption.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorelab.models.text import null_captions
from scorelab.models.text_encoders import build_text_encoder, encode_text
from scorelab.nets.attention import CrossAttention
from scorelab.nets.layers import (add_interval, class_embedding, group_norm,
                                  interval_embedding, sinusoidal_embedding, variance_scaling_,
                                  zero_init)
from scorelab.nets.resample import Downsample, Upsample, downsample, upsample

_RESBLOCKS = ("ddpm", "biggan")
_PROGRESSIVE = ("none", "output_skip", "residual")
_PROGRESSIVE_INPUT = ("none", "input_skip", "residual")


def conv3x3(cin: int, cout: int, init_scale: float = 1.0) -> nn.Conv2d:
    return variance_scaling_(nn.Conv2d(cin, cout, 3, padding=1), init_scale)


def conv1x1(cin: int, cout: int, init_scale: float = 1.0) -> nn.Conv2d:
    return variance_scaling_(nn.Conv2d(cin, cout, 1), init_scale)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [sin(2 pi W v), cos(2 pi W v)], W ~ N(0, scale^2), fixed
    (Tancik et al. 2020; NCSN++). ``W`` is a frozen parameter, as in Score SDE."""

    def __init__(self, size: int, scale: float = 16.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(size) * scale, requires_grad=False)

    def forward(self, v: Tensor) -> Tensor:
        proj = v.float()[:, None] * self.W[None] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class NoiseEmbedding(nn.Module):
    """Noise label -> [B, 4 nf]: positional (DDPM) or Fourier features of log(label)
    (NCSN++; labels below 1e-3 are clamped there), then Linear-SiLU-Linear;
    plus a class embedding with a null label."""

    MIN_FOURIER_LABEL = 1e-3

    def __init__(self, nf: int, kind: str = "positional", fourier_scale: float = 16.0,
                 num_classes: int = 0):
        super().__init__()
        if kind not in ("positional", "fourier"):
            raise ValueError(f"backbone.embedding must be positional or fourier, got {kind!r}")
        self.nf, self.kind, self.num_classes = nf, kind, num_classes
        self.fourier = GaussianFourierProjection(nf, fourier_scale) if kind == "fourier" else None
        in_dim = 2 * nf if kind == "fourier" else nf
        self.dense0 = variance_scaling_(nn.Linear(in_dim, 4 * nf))
        self.dense1 = variance_scaling_(nn.Linear(4 * nf, 4 * nf))
        self.label_emb = class_embedding(num_classes, 4 * nf)

    def forward(self, noise_label: Tensor, y: Tensor | None = None) -> Tensor:
        if self.fourier is not None:
            # The discrete losses use label 0 (DDPM step 0); continuous labels are >= 0.01.
            emb = self.fourier(torch.log(noise_label.clamp_min(self.MIN_FOURIER_LABEL)))
        else:
            emb = sinusoidal_embedding(noise_label, self.nf, ddpm=True)
        emb = self.dense1(F.silu(self.dense0(emb)))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y, noise_label.shape[0], noise_label.device)
        return emb


class ResBlock(nn.Module):
    """DDPM residual block; with ``resample`` ("up"/"down") the BigGAN block, which resamples
    both branches after the first normalisation (naive or FIR) and always projects the skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0,
                 skip_rescale: bool = False, init_scale: float = 0.0,
                 resample: str | None = None, fir: bool = False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.resample, self.fir, self.fir_kernel = resample, fir, tuple(fir_kernel)
        self.norm0 = group_norm(in_ch)
        self.conv0 = conv3x3(in_ch, out_ch)
        self.dense = variance_scaling_(nn.Linear(emb_dim, out_ch))
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv3x3(out_ch, out_ch, init_scale)
        self.skip = conv1x1(in_ch, out_ch) if (in_ch != out_ch or resample) else None
        self.scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return upsample(x, self.fir, self.fir_kernel)
        if self.resample == "down":
            return downsample(x, self.fir, self.fir_kernel)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm0(x))
        h, x = self._resample(h), self._resample(x)
        h = self.conv0(h) + self.dense(F.silu(emb))[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) * self.scale


class Attention(nn.Module):
    """Self-attention over pixels through ``scaled_dot_product_attention`` (flash / memory-
    efficient kernels where available); output projection scaled by ``init_scale``."""

    def __init__(self, channels: int, heads: int = 1, skip_rescale: bool = False,
                 init_scale: float = 0.0):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: {channels} channels not divisible by {heads} heads")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = conv1x1(channels, 3 * channels)
        self.proj = conv1x1(channels, channels, init_scale)
        self.scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))   # [B, heads, HW, C/heads]
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return (x + self.proj(h)) * self.scale


class UNet(nn.Module):
    """Args:
        data_shape: (C, H, W) of one input; H, W divisible by 2^(len(channel_mult) - 1).
        channels: base width nf (Score SDE's ``nf``).
        channel_mult: width multiplier per resolution level.
        num_res_blocks: residual blocks per level in the encoder (decoder: one more).
        attn_resolutions: spatial sizes (e.g. [16]) with self-attention.
        dropout: dropout inside the residual blocks.
        num_classes: 0 for unconditional, else the number of classes (+1 null label).
        embedding: "positional" (DDPM sinusoidal) or "fourier" (random Fourier of log label).
        fourier_scale: std of the Fourier frequencies.
        resblock: "ddpm" (separate up/down layers) or "biggan" (resampling residual blocks).
        skip_rescale: divide residual sums by sqrt(2).
        init_scale: variance scale of the last layer of every residual branch and of the
            output convolution (0: zero-initialised).
        resample_with_conv: "ddpm" resampling layers carry a 3x3 convolution.
        fir: FIR resampling (with ``fir_kernel``) instead of nearest / box.
        fir_kernel: 1-D FIR kernel, [1, 3, 3, 1] in NCSN++.
        progressive: output branch: "none", "output_skip" or "residual".
        progressive_input: input branch: "none", "input_skip" or "residual".
        progressive_combine: "sum" or "cat" for the input_skip combination.
        scale_by_sigma: the score is this output divided by sigma(t) (read by ScoreModel).
        attn_heads: heads of the attention layers.
        text: text encoder options (``build_text_encoder``: a ``TextEncoder``'s vocab_size,
            context, dim, depth, heads, or kind=clip and a ``ClipTextEncoder``'s) for captions
            as y; None (default) for none.
        cross_attention_resolutions: spatial sizes with cross-attention to the text (default:
            ``attn_resolutions``).
        cross_attention_position: the cross-attention queries see each pixel's 2-D position
            (``CrossAttention``'s ``position``; False in checkpoints from before it existed).
        learn_sigma: output 2C channels, the mean part first, then Improved DDPM's variance
            channels (Nichol & Dhariwal 2021; ``ScoreModel`` splits them).
        interval: also take a second time, the interval label of t - r (MeanFlow's average
            velocity; ``layers.IntervalEmbedding``, zero at initialisation).
    """

    def __init__(self, data_shape, channels: int = 128, channel_mult=(1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions=(16,), dropout: float = 0.1,
                 num_classes: int = 0, embedding: str = "positional",
                 fourier_scale: float = 16.0, resblock: str = "ddpm",
                 skip_rescale: bool = False, init_scale: float = 0.0,
                 resample_with_conv: bool = True, fir: bool = False,
                 fir_kernel=(1, 3, 3, 1), progressive: str = "none",
                 progressive_input: str = "none", progressive_combine: str = "sum",
                 scale_by_sigma: bool = False, attn_heads: int = 1, text: dict | None = None,
                 cross_attention_resolutions=None, cross_attention_position: bool = False,
                 learn_sigma: bool = False, interval: bool = False):
        super().__init__()
        if text and num_classes:
            raise ValueError("the UNet conditions on class labels or on text, not both")
        cin, H, W = self._check(data_shape, channel_mult, resblock, progressive,
                                progressive_input, progressive_combine)
        self.data_shape = tuple(data_shape)
        self.learn_sigma = bool(learn_sigma)
        cout = 2 * cin if learn_sigma else cin
        self.scale_by_sigma = bool(scale_by_sigma)
        self.channels_last = False
        self.resblock, self.progressive = resblock, progressive
        self.progressive_input, self.progressive_combine = progressive_input, progressive_combine
        self.fir, self.fir_kernel = fir, tuple(fir_kernel)
        self.skip_scale = 1 / math.sqrt(2) if skip_rescale else 1.0
        nf, levels = channels, len(channel_mult)
        attn = {int(r) for r in attn_resolutions}
        emb_dim = 4 * nf
        self.embed = NoiseEmbedding(nf, embedding, fourier_scale, num_classes)
        self.interval_embed = interval_embedding(interval, emb_dim, nf, ddpm=True)
        self.text = build_text_encoder(text) if text else None
        context_dim = self.text.dim if self.text is not None else 0
        self.text_proj = zero_init(nn.Linear(context_dim, emb_dim)) if context_dim else None
        cross_res = attn if cross_attention_resolutions is None \
            else {int(r) for r in cross_attention_resolutions}

        def cross(ch, res):
            if context_dim and res in cross_res:
                return CrossAttention(ch, context_dim, attn_heads, norm="group",
                                      position=cross_attention_position)
            return None

        def block(a, b, resample=None):
            return ResBlock(a, b, emb_dim, dropout, skip_rescale, init_scale, resample,
                            fir, fir_kernel)

        def attention(ch):
            return Attention(ch, attn_heads, skip_rescale, init_scale)

        def resampler(cls, a, b=None, with_conv=resample_with_conv):
            return cls(a, b, with_conv=with_conv, fir=fir, kernel=fir_kernel)

        self.conv_in = conv3x3(cin, nf)
        self.down = nn.ModuleList()
        skips, ch, res, pyramid_ch = [nf], nf, H, cin
        for level, mult in enumerate(channel_mult):
            stage = nn.Module()
            stage.blocks, stage.attn = nn.ModuleList(), nn.ModuleList()
            stage.cross = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.blocks.append(block(ch, nf * mult))
                ch = nf * mult
                stage.attn.append(attention(ch) if res in attn else nn.Identity())
                stage.cross.append(cross(ch, res) or nn.Identity())
                skips.append(ch)
            if level < levels - 1:
                stage.downsample = block(ch, ch, "down") if resblock == "biggan" \
                    else resampler(Downsample, ch)
                if progressive_input == "input_skip":
                    stage.combine = conv1x1(pyramid_ch, ch)
                    if progressive_combine == "cat":
                        ch *= 2
                elif progressive_input == "residual":
                    stage.pyramid = resampler(Downsample, pyramid_ch, ch, with_conv=True)
                    pyramid_ch = ch
                skips.append(ch)
                res //= 2
            self.down.append(stage)

        self.mid = nn.ModuleList([block(ch, ch), attention(ch), block(ch, ch)])
        self.mid_cross = CrossAttention(ch, context_dim, attn_heads, norm="group",
                                        position=cross_attention_position) \
            if context_dim else None

        self.up = nn.ModuleList()
        pyramid_ch = 0
        for level, mult in reversed(list(enumerate(channel_mult))):
            stage = nn.Module()
            stage.blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.blocks.append(block(ch + skips.pop(), nf * mult))
                ch = nf * mult
            stage.attn = attention(ch) if res in attn else nn.Identity()
            stage.cross = cross(ch, res)
            if progressive != "none":
                top = level == levels - 1
                if progressive == "output_skip":
                    stage.pyramid_norm = group_norm(ch)
                    stage.pyramid_conv = conv3x3(ch, cout, init_scale)
                    pyramid_ch = cout
                elif top:                                   # residual, first stage
                    stage.pyramid_norm = group_norm(ch)
                    stage.pyramid_conv = conv3x3(ch, ch)
                    pyramid_ch = ch
                else:                                       # residual
                    stage.pyramid_up = resampler(Upsample, pyramid_ch, ch, with_conv=True)
                    pyramid_ch = ch
            if level > 0:
                stage.upsample = block(ch, ch, "up") if resblock == "biggan" \
                    else resampler(Upsample, ch)
                res *= 2
            self.up.append(stage)
        assert not skips
        if progressive != "output_skip":
            self.out_norm = group_norm(ch)
            self.out_conv = conv3x3(ch, cout, init_scale)

    @staticmethod
    def _check(data_shape, channel_mult, resblock, progressive, progressive_input, combine):
        if len(data_shape) != 3:
            raise ValueError(f"the UNet needs image data shaped (C, H, W); got data shape "
                             f"{tuple(data_shape)} (the MLP takes vector data)")
        cin, H, W = (int(s) for s in data_shape)
        factor = 2 ** (len(channel_mult) - 1)
        if H % factor or W % factor:
            raise ValueError(f"the UNet with {len(channel_mult)} levels needs image sides "
                             f"divisible by {factor}; got {H}x{W} (change channel_mult)")
        for name, value, allowed in (("resblock", resblock, _RESBLOCKS),
                                     ("progressive", progressive, _PROGRESSIVE),
                                     ("progressive_input", progressive_input, _PROGRESSIVE_INPUT),
                                     ("progressive_combine", combine, ("sum", "cat"))):
            if value not in allowed:
                raise ValueError(f"backbone.{name} must be one of {list(allowed)}, got {value!r}")
        return cin, H, W

    def use_channels_last(self) -> "UNet":
        """Keep weights and activations in NHWC (faster convolutions on tensor cores)."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    def _stage_blocks(self, stage, h, emb, hs, text):
        for blk, att, cross in zip(stage.blocks, stage.attn, stage.cross):
            h = att(blk(h, emb))
            if text is not None and not isinstance(cross, nn.Identity):
                h = cross(h, *text)
            hs.append(h)
        return h

    def forward(self, x: Tensor, noise_label: Tensor, y: Tensor | None = None,
                interval: Tensor | None = None) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        text = None
        if self.text is not None:
            ids = null_captions(x.shape[0], self.text.context, x.device) if y is None else y
            tokens, mask, pooled = encode_text(self.text, ids)
            text, y = (tokens, mask), None
        emb = add_interval(self.embed(noise_label, y), self.interval_embed, interval)
        if text is not None:
            emb = emb + self.text_proj(pooled)
        pyramid = x
        hs = [self.conv_in(x)]                            # [B, nf, H, W]
        h = hs[-1]
        for stage in self.down:
            h = self._stage_blocks(stage, h, emb, hs, text)
            if not hasattr(stage, "downsample"):
                continue
            h = stage.downsample(h, emb) if self.resblock == "biggan" else stage.downsample(h)
            if self.progressive_input == "input_skip":
                pyramid = downsample(pyramid, self.fir, self.fir_kernel)
                skip = stage.combine(pyramid)
                h = torch.cat([skip, h], 1) if self.progressive_combine == "cat" else skip + h
            elif self.progressive_input == "residual":
                pyramid = (stage.pyramid(pyramid) + h) * self.skip_scale
                h = pyramid
            hs.append(h)

        h = self.mid[0](h, emb)                           # [B, nf * mult[-1], H/f, W/f]
        h = self.mid[1](h)
        if text is not None:
            h = self.mid_cross(h, *text)
        h = self.mid[2](h, emb)

        pyramid = None
        for stage in self.up:
            for blk in stage.blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)
            h = stage.attn(h)
            if text is not None and stage.cross is not None:
                h = stage.cross(h, *text)
            if self.progressive == "output_skip":
                out = stage.pyramid_conv(F.silu(stage.pyramid_norm(h)))
                pyramid = out if pyramid is None else \
                    upsample(pyramid, self.fir, self.fir_kernel) + out
            elif self.progressive == "residual":
                if pyramid is None:
                    pyramid = stage.pyramid_conv(F.silu(stage.pyramid_norm(h)))
                else:
                    pyramid = (stage.pyramid_up(pyramid) + h) * self.skip_scale
                    h = pyramid
            if hasattr(stage, "upsample"):
                h = stage.upsample(h, emb) if self.resblock == "biggan" else stage.upsample(h)

        if self.progressive == "output_skip":
            return pyramid                                # [B, C, H, W]
        return self.out_conv(F.silu(self.out_norm(h)))    # [B, C, H, W]
