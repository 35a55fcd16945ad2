"""A noise-conditioned image classifier: the encoder half of the UNet (ADM's classifier,
Dhariwal & Nichol 2021, Sec. 4, with mean pooling instead of attention pooling).

    emb  = NoiseEmbedding(noise_label)                       [B, 4 nf]
    h    = conv_in(x); per level: ResBlocks(h, emb), downsample    [B, nf * mult, ., .]
    out  = Linear(mean_HW(SiLU(GroupNorm(h))))               [B, num_classes] logits

Like the backbones it knows nothing of SDEs: ``scorelab.models.classifier.NoisyClassifier`` feeds it
the scaled noisy input and the diffusion model's noise label.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from scorelab.nets.layers import group_norm
from scorelab.nets.resample import Downsample
from scorelab.nets.unet import NoiseEmbedding, ResBlock, conv3x3


class EncoderClassifier(nn.Module):
    """Args:
        data_shape: (C, H, W) of one input; H, W divisible by 2^(len(channel_mult) - 1).
        num_classes: number of output logits.
        channels: base width nf.
        channel_mult: width multiplier per resolution level.
        num_res_blocks: residual blocks per level.
        dropout: dropout inside the residual blocks.
        embedding: "positional" or "fourier" noise-label features (as the UNet's).
    """

    def __init__(self, data_shape, num_classes: int, channels: int = 32,
                 channel_mult=(1, 2, 2), num_res_blocks: int = 1, dropout: float = 0.0,
                 embedding: str = "positional"):
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"the encoder needs image data shaped (C, H, W); got "
                             f"{tuple(data_shape)}")
        if num_classes < 2:
            raise ValueError(f"a classifier needs a dataset with >= 2 classes, got {num_classes}")
        cin, H, W = (int(s) for s in data_shape)
        factor = 2 ** (len(channel_mult) - 1)
        if H % factor or W % factor:
            raise ValueError(f"the encoder with {len(channel_mult)} levels needs sides "
                             f"divisible by {factor}; got {H}x{W}")
        self.data_shape, self.num_classes = tuple(data_shape), int(num_classes)
        nf = channels
        self.embed = NoiseEmbedding(nf, embedding)
        self.conv_in = conv3x3(cin, nf)
        self.blocks = nn.ModuleList()
        ch = nf
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.blocks.append(ResBlock(ch, nf * mult, 4 * nf, dropout, init_scale=1.0))
                ch = nf * mult
            if level < len(channel_mult) - 1:
                self.blocks.append(Downsample(ch, with_conv=True))
        self.norm = group_norm(ch)
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, noise_label: Tensor) -> Tensor:
        emb = self.embed(noise_label)                      # [B, 4 nf]
        h = self.conv_in(x)                                # [B, nf, H, W]
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return self.head(F.silu(self.norm(h)).mean((2, 3)))   # [B, num_classes]
