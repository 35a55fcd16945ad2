"""python evaluate.py ckpt=PATH: metrics of a checkpoint on its held-out data, written to
metrics.json (validation loss now; FID and bits/dim come with the evaluation issue)."""

from __future__ import annotations

import time

import lightning as L
from omegaconf import DictConfig, OmegaConf

from scorelab.cli.build import LoadedCheckpoint, build_datamodule, pick_device
from scorelab.cli.common import log, output_dir, reports_errors, write_json


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
    trainer = L.Trainer(accelerator=device.type, devices=1, logger=False,
                        enable_model_summary=False, default_root_dir=str(out))
    start = time.perf_counter()
    trainer.validate(loaded.module, datamodule=dm, verbose=False)
    metrics = {
        "val_loss": float(trainer.callback_metrics["val/loss"]),
        "num_val_examples": len(dm.val_set),
        "ckpt": str(loaded.path),
        "weights": "ema" if loaded.ema else "raw",
        "global_step": loaded.global_step,
        "loss": OmegaConf.to_container(loaded.cfg.loss),
        "seed": cfg.seed,
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    write_json(out / "metrics.json", metrics)
    print("\n".join(f"{k:>18}: {v}" for k, v in metrics.items()))
    log.info("wrote %s", out / "metrics.json")
    return metrics
