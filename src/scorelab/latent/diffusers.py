"""A pretrained diffusers ``AutoencoderKL`` (e.g. the Stable Diffusion VAE) as the stage-1
autoencoder of a ``LatentSpace``: ``pip install scorelab[diffusers]``.

Its latent is ``2^(len(block_out_channels) - 1)`` times smaller per side with
``latent_channels`` channels; its scaling is read from its config,

    u = (z - shift_factor) * scaling_factor          (shift_factor null: 0)

never a hard-coded constant (0.18215 is SD 1.x's value, 0.13025 SDXL's, 1.5305 / 0.0609
SD3's). The diffusers VAEs take images in [-1, 1] (their image processor's ``do_normalize``),
scorelab's image range; ``input_range`` maps another range.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor, nn

from scorelab.util.errors import ScorelabError


class AutoencoderUnavailable(ScorelabError):
    """The diffusers extra is not installed, or the pretrained weights cannot be found."""


def _autoencoder_kl():
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise AutoencoderUnavailable(
            "autoencoder.source=diffusers needs the diffusers package: pip install "
            "'scorelab[diffusers]'") from None
    return AutoencoderKL


def load_pretrained(pretrained: str, subfolder: str | None = None,
                    local_files_only: bool = False):
    """An AutoencoderKL from a local directory or a Hugging Face hub id."""
    AutoencoderKL = _autoencoder_kl()
    local = Path(pretrained).expanduser()
    try:
        return AutoencoderKL.from_pretrained(str(local) if local.is_dir() else pretrained,
                                             subfolder=subfolder,
                                             local_files_only=local_files_only,
                                             low_cpu_mem_usage=False)
    except (OSError, ValueError, EnvironmentError) as e:
        where = "the local directory" if local.is_dir() else \
            "not a local directory, and the Hugging Face hub could not provide it (offline?)"
        raise AutoencoderUnavailable(
            f"autoencoder.pretrained={pretrained}: no AutoencoderKL loaded: {where}; "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def from_config(config: dict):
    """An AutoencoderKL of the given config with fresh weights (a checkpoint's weights are
    loaded over them)."""
    return _autoencoder_kl().from_config(config)


def plain_config(vae) -> dict:
    """The VAE's config as plain JSON types (stored in scorelab checkpoints)."""
    return json.loads(json.dumps(dict(vae.config), default=list))


def config_scaling(config: dict) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of an AutoencoderKL config."""
    scale = config.get("scaling_factor")
    if scale is None:
        raise AutoencoderUnavailable("the AutoencoderKL config has no scaling_factor; use "
                                     "autoencoder.normalize=scale to estimate one")
    return float(scale), float(config.get("shift_factor") or 0.0)


class DiffusersAutoencoder(nn.Module):
    """``encode(x) -> (mean, logvar)`` and ``decode(z)`` of an AutoencoderKL for images of
    ``data_shape`` (C, H, W) in [-1, 1].

    Args:
        vae: a ``diffusers.AutoencoderKL``.
        data_shape: the images' (C, H, W).
        input_range: the [lo, hi] the VAE expects ([-1, 1] for the diffusers VAEs).
    """

    def __init__(self, vae, data_shape, input_range=(-1.0, 1.0)):
        super().__init__()
        config = vae.config
        c, h, w = (int(s) for s in data_shape)
        if c != config.in_channels:
            raise ValueError(f"the AutoencoderKL takes {config.in_channels}-channel images but "
                             f"the data has {c} channels")
        factor = 2 ** (len(config.block_out_channels) - 1)
        if h % factor or w % factor:
            raise ValueError(f"the AutoencoderKL downsamples by {factor}: image sides must be "
                             f"divisible by it, got {h}x{w}")
        lo, hi = (float(v) for v in input_range)
        if not hi > lo:
            raise ValueError(f"autoencoder.input_range: needs lo < hi, got {list(input_range)}")
        self.vae, self.lo, self.hi = vae, lo, hi
        self.data_shape = (c, h, w)
        self.latent_shape = (int(config.latent_channels), h // factor, w // factor)

    def _to_vae(self, x: Tensor) -> Tensor:
        return (x + 1) / 2 * (self.hi - self.lo) + self.lo

    def _from_vae(self, x: Tensor) -> Tensor:
        return (x - self.lo) / (self.hi - self.lo) * 2 - 1

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        posterior = self.vae.encode(self._to_vae(x)).latent_dist
        return posterior.mean, posterior.logvar

    def decode(self, z: Tensor) -> Tensor:
        return self._from_vae(self.vae.decode(z).sample)
