"""python sample.py ckpt=PATH num_samples=64 [sampler=<name> sampler.steps=N ...]:
writes samples.png (a grid) and samples.npz (samples in data space, labels, NFE)."""

from __future__ import annotations

import time

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from scorelab.cli.build import LoadedCheckpoint, pick_device, sampler_settings
from scorelab.cli.common import SamplingProgress, log, output_dir, reports_errors, write_json
from scorelab.data.base import inverse_scaler
from scorelab.errors import ConfigError
from scorelab.visualize import save_samples


def resolve_sampler(requested: DictConfig, trained_with: dict, sde=None) -> dict:
    """sampler=checkpoint (name null): the checkpoint's sampler with the non-null keys of
    ``requested`` on top; any named sampler: exactly the requested config. Checked against
    the model's ``sde`` / path when given."""
    req = {k: v for k, v in OmegaConf.to_container(requested, resolve=True).items()
           if v is not None}
    if "name" not in req:
        req = {**trained_with, **req}
    return sampler_settings(req, sde)


def class_labels(n: int, num_classes: int, class_label, device) -> torch.Tensor:
    if class_label is None:
        return torch.arange(n, device=device) % num_classes
    if not 0 <= int(class_label) < num_classes:
        raise ConfigError(f"class_label={class_label}: must be in [0, {num_classes})")
    return torch.full((n,), int(class_label), device=device, dtype=torch.long)


def draw_samples(loaded: LoadedCheckpoint, settings: dict, n: int, seed: int, device,
                 batch_size: int | None = None, class_label=None, desc: str = "sampling"):
    """n samples from a loaded checkpoint, in batches, with a progress bar. A conditional
    model gets class labels (cycling through the classes, or ``class_label``).
    Returns (samples in data space on the CPU, labels or None, NFE per sample, seconds)."""
    module = loaded.module.to(device)
    batch_size = batch_size or n
    labels = class_labels(n, loaded.num_classes, class_label, device) \
        if module.conditional else None
    gen = torch.Generator(device=device).manual_seed(seed)
    n_batches = -(-n // batch_size)
    bar = SamplingProgress(n_batches * settings["steps"], f"{desc} ({settings['name']})")
    xs, nfe, start = [], 0, time.perf_counter()
    for b in range(n_batches):
        lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
        y = labels[lo:hi] if labels is not None else None
        res = module.sample(hi - lo, y=y, generator=gen, callback=bar, sampler=settings)
        xs.append(res.x.cpu())
        nfe = res.nfe
    bar.close()
    x = inverse_scaler(torch.cat(xs), loaded.is_image)
    return x, labels, nfe, time.perf_counter() - start


def save_sample_files(x, labels, nfe: int, out, is_image: bool):
    """samples.png (up to 256 of them) and samples.npz (all, with labels and NFE)."""
    grid = save_samples(x[:256], out / "samples.png", is_image)
    arrays = {"samples": x.numpy().astype(np.float32), "nfe": np.int64(nfe)}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()
    np.savez(out / "samples.npz", **arrays)
    return grid, out / "samples.npz"


@reports_errors
def main(cfg: DictConfig) -> dict:
    out = output_dir()
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ConfigError("num_samples and batch_size must be >= 1")
    loaded = LoadedCheckpoint(cfg.ckpt, use_ema=cfg.use_ema)
    settings = resolve_sampler(cfg.sampler, loaded.module.sampler, loaded.module.model.sde)
    x, labels, nfe, seconds = draw_samples(loaded, settings, cfg.num_samples, cfg.seed,
                                           pick_device(cfg.device), cfg.batch_size,
                                           cfg.class_label)
    grid, npz = save_sample_files(x, labels, nfe, out, loaded.is_image)
    info = {"ckpt": str(loaded.path), "weights": "ema" if loaded.ema else "raw",
            "num_samples": cfg.num_samples, "sampler": settings, "nfe_per_sample": nfe,
            "seed": cfg.seed, "wall_time_s": round(seconds, 2),
            "grid": str(grid), "npz": str(npz)}
    write_json(out / "sampling.json", info)
    log.info("wrote %s and %s", grid, npz)
    return info
