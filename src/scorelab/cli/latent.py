"""The ``autoencoder`` config group -> a ``LatentSpace`` and the DataModule that yields its
posteriors (latent diffusion), with the checks that need the autoencoder made at start-up.

    autoencoder=scorelab autoencoder.ckpt=PATH     a stage-1 run of model=autoencoder
    autoencoder=diffusers autoencoder.pretrained=DIR_OR_HUB_ID      (scorelab[diffusers])
    autoencoder.normalize=scale|shift_scale|channel|fixed|none|config
    autoencoder.encode=cache|on_the_fly

A diffusion checkpoint stores the autoencoder's source, config and weights and the latent
shift and scale, so ``scorelab.cli.build.latent_from_checkpoint`` rebuilds the space without
the stage-1 file.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from scorelab.cli.build import LoadedCheckpoint, build_datamodule, given, plain
from scorelab.latent import diffusers as hf
from scorelab.latent.datamodule import ENCODINGS, LatentDataModule
from scorelab.latent.space import NORMALIZATIONS, LatentSpace
from scorelab.util.checks import boolean, check_values, integer, one_of
from scorelab.util.errors import ConfigError

SOURCES = ("none", "scorelab", "diffusers")
RULES = {"source": one_of(SOURCES, "autoencoder source"),
         "normalize": one_of(NORMALIZATIONS + ("config",), "normalisation"),
         "encode": one_of(ENCODINGS, "encoding"), "sample_posterior": boolean(),
         "batch_size": integer(1), "use_ema": boolean(), "local_files_only": boolean()}


def latent_settings(node) -> dict | None:
    """The ``autoencoder`` node as a checked dict; None for ``source: none`` / no node."""
    s = plain(node)
    if s.get("source", "none") == "none":
        return None
    try:
        check_values("autoencoder", {k: v for k, v in s.items() if k in RULES}, RULES)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if s.get("normalize") == "config" and s["source"] != "diffusers":
        raise ConfigError("autoencoder.normalize=config reads a pretrained VAE's "
                          "scaling_factor (source=diffusers); use scale, shift_scale or "
                          "channel")
    return s


def _given(s: dict, key: str) -> str:
    value = given(s, key)
    if value is None:
        hint = "train one with python train.py experiment=mnist5k_autoencoder" \
            if key == "ckpt" else "a local directory or a Hugging Face hub id"
        raise ConfigError(f"autoencoder.{key}: not given ({hint})")
    return str(value)


def _space(net, s: dict, description: dict, scaling=None) -> LatentSpace:
    normalize, scale, shift = s.get("normalize", "scale"), None, None
    if normalize == "config":
        normalize, (scale, shift) = "fixed", scaling
    elif normalize == "fixed":
        scale, shift = s.get("scale"), s.get("shift")
    try:
        return LatentSpace(net, normalize, s.get("sample_posterior", True), scale, shift,
                           description)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_latent(node, data_shape) -> LatentSpace | None:
    """The latent space the ``autoencoder`` node asks for, for images of ``data_shape``
    (None without one). Reads the stage-1 checkpoint or the pretrained VAE now."""
    s = latent_settings(node)
    if s is None:
        return None
    if s["source"] == "scorelab":
        loaded = LoadedCheckpoint(_given(s, "ckpt"), use_ema=s.get("use_ema", True),
                                  kind="autoencoder")
        if tuple(loaded.data_shape) != tuple(data_shape):
            raise ConfigError(f"autoencoder.ckpt={loaded.path}: trained on images "
                              f"{list(loaded.data_shape)}, but the data has {list(data_shape)}")
        description = {"source": "scorelab", "ckpt": str(loaded.path),
                       "global_step": loaded.global_step,
                       "config": plain(loaded.cfg.backbone)}
        return _space(loaded.module.model, s, description)
    return _diffusers_space(s, hf.load_pretrained(_given(s, "pretrained"), s.get("subfolder"),
                                                  s.get("local_files_only", False)), data_shape)


def pretrained_latent(node, latent_shape) -> LatentSpace | None:
    """The latent space of a published latent model (``model=diffusers`` with
    ``autoencoder=diffusers``): the pretrained VAE whose latent has ``latent_shape``, with
    the fixed scale the model was trained with (its ``scaling_factor``: normalize=config, or
    normalize=fixed with autoencoder.scale); the images' shape follows from the VAE."""
    s = latent_settings(node)
    if s is None:
        return None
    if s["source"] != "diffusers":
        raise ConfigError("model=diffusers takes autoencoder=diffusers (a pretrained VAE), not "
                          f"autoencoder source {s['source']}")
    if s.get("normalize") not in ("config", "fixed"):
        raise ConfigError(f"autoencoder.normalize={s.get('normalize')}: a published latent "
                          f"model was trained with a fixed latent scale: normalize=config (the "
                          f"VAE's scaling_factor) or fixed with autoencoder.scale")
    vae = hf.load_pretrained(_given(s, "pretrained"), s.get("subfolder"),
                             s.get("local_files_only", False))
    config = vae.config
    factor = 2 ** (len(config.block_out_channels) - 1)
    c, h, w = (int(v) for v in latent_shape)
    if c != config.latent_channels:
        raise ConfigError(f"autoencoder.pretrained={s['pretrained']}: its latent has "
                          f"{config.latent_channels} channels, the network takes {c}")
    return _diffusers_space(s, vae, (int(config.in_channels), h * factor, w * factor))


def _diffusers_space(s: dict, vae, data_shape) -> LatentSpace:
    config = hf.plain_config(vae)
    input_range = list(s.get("input_range") or (-1.0, 1.0))
    try:
        net = hf.DiffusersAutoencoder(vae, data_shape, input_range)
    except ValueError as e:
        raise ConfigError(f"autoencoder.pretrained={s['pretrained']}: {e}") from None
    description = {"source": "diffusers", "pretrained": str(s["pretrained"]),
                   "config": config, "input_range": input_range}
    scaling = hf.config_scaling(config) if s.get("normalize") == "config" else None
    return _space(net, s, description, scaling)


def latent_datamodule(node, pixels, latent: LatentSpace, estimate: bool) -> LatentDataModule:
    """The DataModule of posteriors of ``pixels`` through ``latent``, as the node configures
    its encoding."""
    s = latent_settings(node) or {}
    try:
        return LatentDataModule(pixels, latent, s.get("encode", "cache"),
                                s.get("batch_size", 256), estimate)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def checkpoint_datamodule(loaded, batch_size: int | None = None):
    """The data module of a loaded checkpoint's run (its latents for a latent model, with
    the checkpoint's shift and scale), set up."""
    data_cfg = loaded.cfg
    if batch_size is not None:
        data_cfg = OmegaConf.merge(data_cfg, {"data": {"batch_size": batch_size}})
    dm = build_datamodule(data_cfg, loaded.tokenizer)
    if loaded.module.latent is not None:     # shift and scale come from the checkpoint
        dm = latent_datamodule(loaded.cfg.get("autoencoder"), dm, loaded.module.latent,
                               estimate=False)
    dm.setup("validate")
    return dm
