"""python sample.py ckpt=PATH num_samples=64 [sampler=<name> sampler.steps=N ...]
(or model=diffusers model.pretrained=DIR in place of ckpt=: a published network)
[guidance=cfg guidance.scale=3 class_label=7] [task=inpaint|colorize ...]:
writes samples.png (a grid) and samples.npz (samples in data space, labels, NFE); for
inpainting / colorization also observations.png (the input) and, from the dataset,
originals.png."""

from __future__ import annotations

import time

import numpy as np
import torch
from omegaconf import DictConfig

from scorelab.cli.build import LoadedCheckpoint, pick_device, plain, sampler_settings
from scorelab.cli.common import log, output_dir, reports_errors, write_json
from scorelab.cli.extras import apply_extras
from scorelab.cli.guide import build_guidance
from scorelab.cli.latent import checkpoint_datamodule
from scorelab.cli.pretrained import LoadedPretrained, model_source, weights_of
from scorelab.cli.task import (check_task, constraint_for, draw_controlled, observations,
                               task_settings)
from scorelab.data.base import inverse_scaler
from scorelab.data.captions import encode_prompts, read_prompts
from scorelab.util.errors import ConfigError, Interrupted
from scorelab.guidance.predictions import describe
from scorelab.util.interrupt import check, requested, stop_on_signals
from scorelab.util.progress import SamplingProgress
from scorelab.latent.space import latent_summary
from scorelab.util.visualize import save_samples


def resolve_sampler(requested: DictConfig, trained_with: dict, model=None,
                    guidance=None) -> dict:
    """sampler=checkpoint (name null): the checkpoint's sampler with the non-null keys of
    ``requested`` on top; any named sampler: exactly the requested config. Checked against
    the ``ScoreModel`` (its path, its learned variances) and the guidance when given."""
    req = {k: v for k, v in plain(requested).items() if v is not None}
    if "name" not in req:
        req = {**trained_with, **req}
    return sampler_settings(req, None if model is None else model.path, model, guidance)


def class_labels(n: int, num_classes: int, class_label, device) -> torch.Tensor:
    if class_label is None:
        return torch.arange(n, device=device) % num_classes
    if not 0 <= int(class_label) < num_classes:
        raise ConfigError(f"class_label={class_label}: must be in [0, {num_classes})")
    return torch.full((n,), int(class_label), device=device, dtype=torch.long)


def caption_ids(loaded: LoadedCheckpoint, captions: list[str], n: int, device) -> torch.Tensor:
    """The token ids [n, context] of ``captions`` taken in turn, with the checkpoint's own
    tokenizer (``encode_prompts``)."""
    ids = encode_prompts(loaded.tokenizer, captions)
    return ids[torch.arange(n) % len(ids)].to(device)


def prompt_list(cfg: DictConfig, loaded: LoadedCheckpoint) -> list[str] | None:
    """The prompts of ``prompt`` / ``prompts=FILE`` (None: none given), checked against the
    model: prompts need a model trained on captions, class labels one trained on classes."""
    if cfg.get("prompt") is not None and cfg.get("prompts") is not None:
        raise ConfigError("give prompt=TEXT or prompts=FILE, not both")
    captions = None
    if cfg.get("prompt") is not None:
        captions = [str(cfg.prompt)]
    elif cfg.get("prompts") is not None:
        try:
            captions = read_prompts(cfg.prompts)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from None
    takes = loaded.module.takes_captions
    if captions is not None and not takes:
        raise ConfigError("prompt / prompts: this checkpoint was not trained on captions "
                          "(conditional=true on a captioned dataset such as data=mnist5k_pairs)")
    if takes and cfg.get("class_label") is not None:
        raise ConfigError("class_label: this checkpoint is conditioned on captions; give "
                          "prompt=TEXT or prompts=FILE")
    return captions


def draw_samples(loaded: LoadedCheckpoint, settings: dict, n: int, seed: int, device,
                 batch_size: int | None = None, class_label=None, desc: str = "sampling",
                 captions: list[str] | None = None):
    """n samples from a loaded checkpoint, in batches, with a progress bar. A conditional
    model gets class labels (cycling through the classes, or ``class_label``); a model on
    captions gets ``captions`` in turn (none: the empty caption).
    Returns (samples in data space on the CPU, labels or None, NFE per sample, seconds)."""
    module = loaded.module.to(device)
    batch_size = batch_size or n
    labels = class_labels(n, loaded.num_classes, class_label, device) \
        if module.takes_labels else None
    if captions is not None:
        labels = caption_ids(loaded, captions, n, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    n_batches = -(-n // batch_size)
    bar = SamplingProgress(n_batches, f"{desc} ({settings['name']})")
    xs, nfe, start = [], 0, time.perf_counter()
    for b in range(n_batches):
        if requested():             # pre-empted: keep the batches already drawn
            break
        lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
        y = labels[lo:hi] if labels is not None else None
        res = module.sample(hi - lo, y=y, generator=gen, callback=bar, sampler=settings)
        bar.batch_done()
        xs.append(res.x.cpu())
        nfe = res.nfe
    bar.close()
    x = inverse_scaler(torch.cat(xs) if xs else torch.zeros((0,) + loaded.data_shape),
                       loaded.is_image)
    labels = labels[:len(x)] if labels is not None else None
    return x, labels, nfe, time.perf_counter() - start


def save_sample_files(x, labels, nfe: int, out, is_image: bool,
                      prompts: list[str] | None = None):
    """samples.png (up to 256 of them, each labelled with its prompt when given) and
    samples.npz (all, with labels and NFE)."""
    grid = save_samples(x[:256], out / "samples.png", is_image,
                        prompts[:256] if prompts is not None else None)
    arrays = {"samples": x.numpy().astype(np.float32), "nfe": np.int64(nfe)}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()
    np.savez(out / "samples.npz", **arrays)
    return grid, out / "samples.npz"


def load_guided(cfg: DictConfig) -> LoadedCheckpoint | LoadedPretrained:
    """The checkpoint (``ckpt=``) or published network (``model=diffusers``) with the
    ``guidance`` group's guidance set (checked at start-up)."""
    if model_source(cfg) == "pretrained":
        loaded = LoadedPretrained(cfg.model, cfg.get("data"), cfg.get("autoencoder"))
    else:
        if (cfg.get("autoencoder") or {}).get("source", "none") != "none":
            raise ConfigError("autoencoder: a scorelab checkpoint carries its own latent "
                              "space; autoencoder= is for a published network (model=diffusers)")
        loaded = LoadedCheckpoint(cfg.ckpt, use_ema=cfg.use_ema)
    loaded.module.set_guidance(build_guidance(cfg.get("guidance"), loaded.module))
    return loaded


def _controlled(cfg, task, loaded, settings, device, out, captions=None) -> dict:
    """Inpainting / colorization: samples, the observations and, from the dataset, the
    originals; the largest change of a known pixel (0 for inpainting: pasted exactly). A
    model on captions reads ``captions`` (the prompts), else the dataset images' own."""
    observation, data_labels = observations(task, loaded, cfg.num_samples)
    labels = None
    if loaded.module.takes_labels:
        labels = data_labels if data_labels is not None and cfg.class_label is None else \
            class_labels(cfg.num_samples, loaded.num_classes, cfg.class_label, "cpu")
    elif loaded.module.takes_captions:
        labels = caption_ids(loaded, captions, cfg.num_samples, "cpu") \
            if captions is not None else data_labels
    bar = SamplingProgress(-(-cfg.num_samples // cfg.batch_size),
                           f"{task['name']} ({settings['name']})")
    start = time.perf_counter()
    x, nfe = draw_controlled(task, loaded, settings, observation, labels, cfg.seed, device,
                             cfg.batch_size, bar)
    bar.close()
    seconds = time.perf_counter() - start
    constraint = constraint_for(task, loaded, observation)
    known_change = (constraint.paste(x) - x).abs().max().item()
    shown = constraint.paste(torch.zeros_like(observation))      # unknown part blank
    save_samples(inverse_scaler(shown[:256], True), out / "observations.png", True)
    if data_labels is not None:
        save_samples(inverse_scaler(observation[:256], True), out / "originals.png", True)
    x = inverse_scaler(x, loaded.is_image)
    return {"x": x, "labels": labels, "nfe": nfe, "seconds": seconds,
            "info": {"task": task, "known_max_abs_change": known_change}}


@reports_errors
def main(cfg: DictConfig) -> dict:
    apply_extras(cfg)
    with stop_on_signals():
        return _main(cfg)


def _main(cfg: DictConfig) -> dict:
    out = output_dir()
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ConfigError("num_samples and batch_size must be >= 1")
    task = task_settings(cfg.get("task"))
    loaded = load_guided(cfg)
    check_task(task, loaded)
    captions = prompt_list(cfg, loaded)
    settings = resolve_sampler(cfg.sampler, loaded.module.sampler, loaded.module.model,
                               loaded.module.guidance)
    if settings.get("variance") == "analytic":
        # Analytic-DPM's moments come from the run's training data (before the first sample)
        loaded.module.analytic_data = checkpoint_datamodule(loaded)
    device = pick_device(cfg.device)
    extra = {}
    if task["name"] == "generate":
        x, labels, nfe, seconds = draw_samples(loaded, settings, cfg.num_samples, cfg.seed,
                                               device, cfg.batch_size, cfg.class_label,
                                               captions=captions)
        if captions is not None:
            extra["prompts"] = [captions[i % len(captions)] for i in range(len(x))]
    else:
        done = _controlled(cfg, task, loaded, settings, device, out, captions)
        if captions is not None:
            done["info"]["prompts"] = [captions[i % len(captions)] for i in range(len(done["x"]))]
        x, labels, nfe, seconds, extra = done["x"], done["labels"], done["nfe"], \
            done["seconds"], done["info"]
    if len(x) == 0:
        check("sampling")                           # stopped before the first batch
    grid, npz = save_sample_files(x, labels, nfe, out, loaded.is_image, extra.get("prompts"))
    guidance = loaded.module.guidance
    info = {"ckpt": str(loaded.path), **weights_of(loaded),
            "num_samples": cfg.num_samples, "sampler": settings, "nfe_per_sample": nfe,
            "seed": cfg.seed, "wall_time_s": round(seconds, 2),
            "guidance": describe(guidance), "latent": latent_summary(loaded.module.latent),
            "grid": str(grid), "npz": str(npz), **extra}
    if requested():
        info["interrupted"] = f"signal {requested()}: {len(x)} of {cfg.num_samples} samples"
    write_json(out / "sampling.json", info)
    log.info("wrote %s and %s", grid, npz)
    if requested():
        raise Interrupted(f"stopped by signal {requested()} after {len(x)} of "
                          f"{cfg.num_samples} samples; {npz} holds them", requested())
    return info
