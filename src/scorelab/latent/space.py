"""The latent space of a frozen stage-1 autoencoder, in which an unchanged diffusion runs
(latent diffusion: Rombach et al. 2022, Sec. 3 and 4.3.2).

    q(z | x) = N(mean(x), exp(logvar(x)))          the encoder's posterior
    u        = (z - shift) * scale                 what the diffusion models  [B, c, h, w]
    x_hat    = D(u / scale + shift)                decoding (in fp32)

``scale`` and ``shift`` (scalars or per latent channel) bring u to zero mean and unit
variance. They are estimated once over the whole training set from the posteriors, in closed
form (no sampled z): with N latent values per channel,

    E[z]   = (1/N) sum mean,      E[z^2] = (1/N) sum (mean^2 + exp(logvar))

(without the exp(logvar) term when the posterior mean is used instead of a sample), so the
estimate is a deterministic function of the data and the encoder: the same on every process.
LDM's rule is scale = 1 / std(z) from one batch with no shift; here "scale" is that rule
over the whole dataset, "shift_scale" also removes the mean (SD3, FLUX), "channel" does both
per channel, "fixed" takes given values (a pretrained autoencoder's scaling_factor and
shift_factor), "none" leaves z as it is.

A batch of posteriors is one tensor [B, 2, c, h, w]: mean and log-variance stacked on
dim 1 (``stack_posterior``), the form in which a DataModule caches and yields them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

NORMALIZATIONS = ("none", "scale", "shift_scale", "channel", "fixed")


def stack_posterior(mean: Tensor, logvar: Tensor) -> Tensor:
    return torch.stack([mean, logvar], dim=1)


class PosteriorMoments:
    """Running float64 sums, per latent channel, of E[z] and E[z^2] under q(z|x) over a
    dataset, fed with batches of stacked posteriors in a fixed order."""

    def __init__(self, sample_posterior: bool = True):
        self.sample_posterior = sample_posterior
        self.s1 = self.s2 = None
        self.count = 0

    def update(self, posterior: Tensor) -> None:
        mean, logvar = posterior.double().unbind(1)
        second = mean ** 2 + (logvar.exp() if self.sample_posterior else 0)
        s1, s2 = mean.sum(dim=(0, 2, 3)), second.sum(dim=(0, 2, 3))
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.count += mean.shape[0] * mean.shape[2] * mean.shape[3]

    def shift_and_scale(self, normalize: str) -> tuple[Tensor, Tensor]:
        """(shift, scale), each [c, 1, 1] in float32, for an estimated normalisation
        ("scale", "shift_scale" or "channel")."""
        if self.count == 0:
            raise ValueError("no latents to estimate the scale from")
        channels = self.s1.numel()
        if normalize == "channel":
            mean = self.s1 / self.count
            var = self.s2 / self.count - mean ** 2
        else:
            mean = (self.s1.sum() / (self.count * channels)).expand(channels)
            second = (self.s2.sum() / (self.count * channels)).expand(channels)
            var = second - mean ** 2
        if bool((var <= 0).any()):
            raise ValueError("the latents have zero variance: the autoencoder's encoder is "
                             "degenerate")
        shift = torch.zeros_like(mean) if normalize == "scale" else mean
        return (shift.float().reshape(-1, 1, 1),
                var.rsqrt().float().reshape(-1, 1, 1))


class LatentSpace(nn.Module):
    """Args:
        autoencoder: an ``nn.Module`` with ``encode(x) -> (mean, logvar)``, ``decode(z)``,
            ``data_shape`` (C, H, W) and ``latent_shape`` (c, h, w); frozen here.
        normalize: one of ``NORMALIZATIONS`` (see the module docstring).
        sample_posterior: each use draws z ~ q(z|x) (True) or takes the posterior mean.
        scale, shift: the values for ``normalize="fixed"`` (numbers).
        description: what to store in a checkpoint to rebuild ``autoencoder`` (its source
            and config); returned by ``describe()``.
    """

    def __init__(self, autoencoder: nn.Module, normalize: str = "scale",
                 sample_posterior: bool = True, scale: float | None = None,
                 shift: float | None = None, description: dict | None = None):
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"autoencoder.normalize: must be one of "
                             f"{', '.join(NORMALIZATIONS)}, got {normalize!r}")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.normalize, self.sample_posterior = normalize, bool(sample_posterior)
        self.data_shape = tuple(autoencoder.data_shape)
        self.latent_shape = tuple(autoencoder.latent_shape)
        c = self.latent_shape[0]
        self.register_buffer("scale", torch.ones(c, 1, 1))
        self.register_buffer("shift", torch.zeros(c, 1, 1))
        if normalize == "fixed":
            if scale is None or not scale > 0:
                raise ValueError(f"autoencoder.normalize=fixed needs a scale > 0, got {scale}")
            self.scale.fill_(float(scale))
            self.shift.fill_(float(shift or 0.0))
        self.description = dict(description or {})

    def train(self, mode: bool = True):
        """The autoencoder stays in eval mode (it is not trained here)."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    @property
    def estimated(self) -> bool:
        """Whether the shift and scale come from the data (not fixed or none)."""
        return self.normalize in ("scale", "shift_scale", "channel")

    @torch.no_grad()
    def posterior(self, x: Tensor) -> Tensor:
        """Stacked posterior [B, 2, c, h, w] of images x in [-1, 1], in fp32."""
        with torch.autocast(x.device.type, enabled=False):
            mean, logvar = self.autoencoder.encode(x.float())
        return stack_posterior(mean.float(), logvar.float())

    def set_statistics(self, moments: PosteriorMoments) -> None:
        """Shift and scale from the whole dataset's posterior moments (estimated modes)."""
        if not self.estimated:
            return
        shift, scale = moments.shift_and_scale(self.normalize)
        self.shift.copy_(shift)
        self.scale.copy_(scale)

    def draw(self, posterior: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """u = (z - shift) * scale with z ~ q(z|x) (or its mean)."""
        mean, logvar = posterior.unbind(1)
        z = mean
        if self.sample_posterior:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device,
                                dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        return (z - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, u: Tensor) -> Tensor:
        """Images D(u / scale + shift), decoded in fp32 whatever the training precision."""
        with torch.autocast(u.device.type, enabled=False):
            return self.autoencoder.decode(u.float() / self.scale + self.shift)

    def log_scale_per_dim(self) -> float:
        """(1/D) log |du/dz|: the mean of log(scale) over the D latent values, which turns a
        density of u into one of z: log p(z) = log p(u) + D * this."""
        return float(torch.log(self.scale).expand(self.latent_shape).mean())

    def describe(self) -> dict:
        """What a checkpoint stores to rebuild this space without the stage-1 file: the
        autoencoder's source and config, and the normalisation (its values are buffers)."""
        return {**self.description, "normalize": self.normalize,
                "sample_posterior": self.sample_posterior,
                "data_shape": list(self.data_shape), "latent_shape": list(self.latent_shape),
                "scale": [round(v, 6) for v in self.scale.flatten().tolist()],
                "shift": [round(v, 6) for v in self.shift.flatten().tolist()]}


def latent_summary(latent: LatentSpace | None) -> dict | None:
    """What result files record of a latent space: ``describe()`` without the autoencoder's
    config (None for a pixel-space model)."""
    if latent is None:
        return None
    return {k: v for k, v in latent.describe().items() if k != "config"}


def nats_to_latent_bits(nats_per_dim_u: Tensor | float, log_scale_per_dim: float):
    """Negative log-likelihood of u in nats per dimension -> bits per dimension of the
    autoencoder's latent z (invariant to the chosen scale): (nll_u - log scale) / ln 2."""
    return (nats_per_dim_u - log_scale_per_dim) / math.log(2)
