"""python evaluate.py ckpt=PATH: metrics of a checkpoint, written to metrics.json.

* loss: validation loss of the held-out split (EMA weights by default).
* bpd (``bpd_examples`` > 0): bits/dim of that many held-out examples through the
  probability-flow ODE (8-bit dequantised images; nats/dim for vector data).
* samples (``num_samples`` > 0): draws with the ``sampler`` group (default: the checkpoint's),
  writes samples.png / samples.npz and records sampler settings, NFE and time.
FID and IS come with the evaluation issue.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from scorelab.cli.build import LoadedCheckpoint, build_datamodule, pick_device
from scorelab.cli.common import log, output_dir, reports_errors, write_json
from scorelab.cli.sample import draw_samples, resolve_sampler, save_sample_files
from scorelab.data.base import inverse_scaler
from scorelab.likelihood import bits_per_dim, log_likelihood


def _validation_loss(loaded, dm, device, out) -> dict:
    trainer = L.Trainer(accelerator=device.type, devices=1, logger=False,
                        enable_model_summary=False, default_root_dir=str(out))
    trainer.validate(loaded.module, datamodule=dm, verbose=False)
    return {"val_loss": float(trainer.callback_metrics["val/loss"]),
            "num_val_examples": len(dm.val_set)}


def _likelihood(cfg, loaded, dm, device) -> dict:
    module = loaded.module.to(device)
    n = min(cfg.bpd_examples, len(dm.val_set))
    x = torch.stack([dm.val_set[i][0] for i in range(n)]).to(device)
    y = torch.stack([torch.as_tensor(dm.val_set[i][1]) for i in range(n)]).to(device)
    score_fn = module.model.conditional_score_fn(y if module.conditional else None)
    opts = OmegaConf.to_container(cfg.likelihood, resolve=True)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    start = time.perf_counter()
    if loaded.is_image:
        values, nfe = bits_per_dim(score_fn, module.model.sde, inverse_scaler(x, True),
                                   generator=gen, **opts)
        key = "bpd"
    else:
        res = log_likelihood(score_fn, module.model.sde, x, generator=gen, **opts)
        values, nfe, key = -res.logp / x[0].numel(), res.nfe, "nll_nats_per_dim"
    return {key: float(values.mean()), f"{key}_stderr": float(values.std() / math.sqrt(n)),
            "likelihood": {**opts, "num_examples": n, "nfe": nfe,
                           "wall_time_s": round(time.perf_counter() - start, 2)}}


def _samples(cfg, loaded, device, out) -> dict:
    settings = resolve_sampler(cfg.sampler, loaded.module.sampler)
    x, labels, nfe, seconds = draw_samples(loaded, settings, cfg.num_samples, cfg.seed, device)
    save_sample_files(x, labels, nfe, out, loaded.is_image)
    return {"samples": {"sampler": settings, "num_samples": cfg.num_samples, "nfe": nfe,
                        "wall_time_s": round(seconds, 2)}}


@reports_errors
def main(cfg: DictConfig) -> dict:
    out = output_dir()
    L.seed_everything(cfg.seed, verbose=False)
    loaded = LoadedCheckpoint(cfg.ckpt, use_ema=cfg.use_ema)
    data_cfg = loaded.cfg
    if cfg.batch_size is not None:
        data_cfg = OmegaConf.merge(data_cfg, {"data": {"batch_size": cfg.batch_size}})
    dm = build_datamodule(data_cfg)
    dm.setup("validate")
    device = pick_device(cfg.device)
    metrics = {"ckpt": str(loaded.path), "weights": "ema" if loaded.ema else "raw",
               "global_step": loaded.global_step, "seed": cfg.seed,
               "loss": OmegaConf.to_container(loaded.cfg.loss)}
    metrics.update(_validation_loss(loaded, dm, device, out))
    if cfg.bpd_examples > 0:
        metrics.update(_likelihood(cfg, loaded, dm, device))
    if cfg.num_samples > 0:
        metrics.update(_samples(cfg, loaded, device, out))
    write_json(out / "metrics.json", metrics)
    print("\n".join(f"{k:>18}: {v}" for k, v in metrics.items()))
    log.info("wrote %s", out / "metrics.json")
    return metrics
