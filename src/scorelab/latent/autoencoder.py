"""Stage 1 of latent diffusion: a KL-regularised convolutional autoencoder (Rombach et al.
2022, Sec. 3 and App. G; Kingma & Welling 2014).

    (mean, logvar) = E(x),            z = mean + exp(logvar / 2) * eps      [B, c, H/f, W/f]
    x_hat          = D(z)
    loss           = rec(x, x_hat) + kl_weight * KL(N(mean, exp(logvar)) || N(0, I)),
    KL             = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar) / B     (per image)

with rec the per-pixel L1 or L2 error summed over an image and averaged over the batch, and
f = 2^(len(channel_mult) - 1). The small KL weight keeps the latent near a standard normal
without blurring the reconstruction; no perceptual term (its weights are not available
offline). PSNR = 10 log10(range^2 / MSE) with data in [-1, 1] (range 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorelab.nets.layers import group_norm
from scorelab.nets.resample import Downsample, Upsample
from scorelab.nets.unet import conv3x3

RECONSTRUCTIONS = ("l1", "l2")


class _Res(nn.Module):
    """GroupNorm-SiLU-conv twice with a skip (no noise embedding)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(group_norm(cin), nn.SiLU(), conv3x3(cin, cout),
                                  group_norm(cout), nn.SiLU(), conv3x3(cout, cout))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class KLAutoencoder(nn.Module):
    """Args:
        data_shape: (C, H, W); H, W divisible by the downsampling factor.
        latent_channels: channels c of the latent.
        channels: base width.
        channel_mult: width per level; the latent is 2^(levels - 1) times smaller per side.
        kl_weight: weight of the KL term.
        reconstruction: "l1" or "l2".
    """

    def __init__(self, data_shape, latent_channels: int = 4, channels: int = 32,
                 channel_mult=(1, 2, 2), kl_weight: float = 1e-4, reconstruction: str = "l2"):
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"the autoencoder needs image data shaped (C, H, W); got "
                             f"{tuple(data_shape)}")
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"backbone.reconstruction: must be one of l1, l2, got "
                             f"{reconstruction!r}")
        if not (isinstance(kl_weight, (int, float)) and kl_weight >= 0):
            raise ValueError(f"backbone.kl_weight: must be a number >= 0, got {kl_weight!r}")
        cin, H, W = (int(s) for s in data_shape)
        self.factor = 2 ** (len(channel_mult) - 1)
        if H % self.factor or W % self.factor:
            raise ValueError(f"the autoencoder with {len(channel_mult)} levels needs sides "
                             f"divisible by {self.factor}; got {H}x{W}")
        self.data_shape = (cin, H, W)
        self.latent_shape = (int(latent_channels), H // self.factor, W // self.factor)
        self.kl_weight, self.reconstruction = float(kl_weight), reconstruction
        widths = [channels * m for m in channel_mult]
        enc = [conv3x3(cin, widths[0])]
        for i, w in enumerate(widths):
            enc.append(_Res(widths[max(i - 1, 0)], w))
            if i < len(widths) - 1:
                enc.append(Downsample(w, with_conv=True))
        enc += [group_norm(widths[-1]), nn.SiLU(), conv3x3(widths[-1], 2 * latent_channels)]
        self.encoder = nn.Sequential(*enc)
        dec = [conv3x3(latent_channels, widths[-1])]
        for i, w in reversed(list(enumerate(widths))):
            dec.append(_Res(widths[min(i + 1, len(widths) - 1)], w))
            if i > 0:
                dec.append(Upsample(w, with_conv=True))
        dec += [group_norm(widths[0]), nn.SiLU(), conv3x3(widths[0], cin)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance [B, c, H/f, W/f]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def sample(mean: Tensor, logvar: Tensor, generator=None) -> Tensor:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device,
                            dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def metrics(self, x: Tensor, y: Tensor | None = None, generator=None) -> dict[str, Tensor]:
        """{"loss", "reconstruction", "kl", "psnr"} of a batch in [-1, 1] (labels unused)."""
        mean, logvar = self.encode(x)
        x_hat = self.decode(self.sample(mean, logvar, generator))
        err = (x_hat - x).abs() if self.reconstruction == "l1" else (x_hat - x) ** 2
        rec = err.flatten(1).sum(1).mean()
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
        return {"loss": rec + self.kl_weight * kl, "reconstruction": rec, "kl": kl,
                "psnr": psnr(x_hat.clamp(-1, 1), x)}

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """D(mean of E(x)): the deterministic reconstruction."""
        return self.decode(self.encode(x)[0])


def psnr(x_hat: Tensor, x: Tensor, data_range: float = 2.0) -> Tensor:
    """Mean over images of 10 log10(range^2 / MSE)."""
    mse = F.mse_loss(x_hat, x, reduction="none").flatten(1).mean(1).clamp(min=1e-12)
    return (10 * torch.log10(data_range ** 2 / mse)).mean()

