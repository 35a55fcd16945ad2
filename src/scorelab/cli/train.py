"""python train.py [overrides]: train, then leave in the run directory the last checkpoint,
a sample grid from the EMA weights (guided as the ``guidance`` group says), metrics.json and
the composed config. ``model=classifier`` trains a noisy classifier, ``model=autoencoder`` a
stage-1 autoencoder instead (no samples; their validation metrics in metrics.json).
``autoencoder=<source>`` trains the diffusion in that autoencoder's latent space (samples,
grids and FID decoded to pixels).

``main`` runs four steps: ``build`` (config checks, data, module, callbacks), ``starting_point``
(the run's own last.ckpt, or ``ckpt_path`` from another run, whole or as fine-tuning
weights), ``fit`` (loggers, Trainer, training with scorelab's pre-emption stop path) and
``finish`` (final validation, sample grid, metrics.json)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from scorelab.metrics.callbacks import MetricCallback, Metrics
from scorelab.training.callbacks import (EMA, DivergenceGuard, RandomStates, SampleGrid,
                                        log_image)
from scorelab.training.callbacks.finetune import NEW_PARAMETERS, FinetuneFrom
from scorelab.training.auxiliary_module import AuxiliaryModule
from scorelab.cli.build import (LoadedCheckpoint, build_any_module, build_datamodule,
                                check_sampler_guidance, check_training_config, make,
                                pick_device, state_mismatch)
from scorelab.cli.guide import build_guidance
from scorelab.cli.latent import build_latent, latent_datamodule
from scorelab.cli.extras import apply_extras
from scorelab.cli.preemption import cluster_plugins, stop_signals_as_sigterm
from scorelab.cli.loggers import build_logger, close_loggers
from scorelab.cli.common import (REQUEUED, fresh_path, log, metric_key, optimized,
                                 output_dir, record_status, reports_errors, write_json)
from scorelab.cli.sample import draw_samples
from scorelab.util.errors import ConfigError, Interrupted
from scorelab.guidance.predictions import describe
from scorelab.latent.space import latent_summary
from scorelab.util.speed import apply_speed, resolve_precision, uses_gpu
from scorelab.cli.summarize import job_status
from scorelab.util.visualize import save_samples


def _callbacks(cfg: DictConfig, dm, samples: bool = True) -> list:
    """Callbacks from the ``callbacks`` group; an entry set to null is switched off. Sample
    grids and metric callbacks go before EMA so that they see the EMA weights. A run that
    draws no samples (``samples=False``: a classifier, an autoencoder) skips the
    sample-drawing ones."""
    made = {}
    for name, node in (cfg.callbacks or {}).items():
        if node is None:
            continue
        extra = {"inverse_scaler": dm.inverse_scaler, "is_image": dm.is_image} \
            if name == "sample_grid" else {}
        made[name] = make(cfg, f"callbacks.{name}", **extra)
        if not samples and isinstance(made[name], (SampleGrid, MetricCallback)):
            log.info("model=%s draws no samples: callbacks.%s skipped", cfg.model, name)
            del made[name]
            continue
        if isinstance(made[name], Metrics):
            try:        # missing feature weights or statistics stop the run here
                made[name].prepare(dm)
            except (ValueError, FileNotFoundError) as e:
                raise ConfigError(f"callbacks.{name}: {e}") from None
    first = [c for c in made.values() if isinstance(c, (SampleGrid, MetricCallback))]
    return first + [c for c in made.values() if c not in first] + [
        RandomStates(), DivergenceGuard(cfg.get("divergence_factor"))]


def _checkpoint_callback(callbacks):
    for c in callbacks:
        if isinstance(c, ModelCheckpoint):
            return c
    raise ConfigError("callbacks.checkpoint is null: a training run must save checkpoints")


@dataclass
class Run:
    """What the steps of a training run hand on: built by ``build``, completed by
    ``starting_point`` and ``fit``, read by ``finish``."""
    cfg: DictConfig
    out: Path
    dm: object
    module: L.LightningModule
    latent: object
    callbacks: list
    checkpoint: ModelCheckpoint
    loggers: list = field(default_factory=list)
    trainer: L.Trainer | None = None
    train_time: float = 0.0
    started_from: dict | None = None

    @property
    def auxiliary(self) -> bool:
        """A classifier or autoencoder run: no samples, its own validation metrics."""
        return isinstance(self.module, AuxiliaryModule)


@reports_errors
def main(cfg: DictConfig) -> dict:
    """Train as ``cfg`` says; return ``optimized_metric`` (or every metric) to Hydra."""
    apply_extras(cfg)
    run = build(cfg)
    ckpt = starting_point(run)
    fit(run, ckpt)
    return finish(run)


def build(cfg: DictConfig) -> Run:
    """Check the config, seed, and build the data, the module (with its latent space and
    guidance) and the callbacks. Nothing is written yet."""
    check_training_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    dm = build_datamodule(cfg, training=True)
    dm.setup("fit")
    tokenizer = getattr(dm, "tokenizer", None)
    latent = build_latent(cfg.get("autoencoder"), dm.shape)
    module = build_any_module(cfg, dm.shape, dm.num_classes, dm.is_image, latent=latent,
                              tokenizer=tokenizer.state_dict() if tokenizer else None)
    if latent is not None:
        dm = latent_datamodule(cfg.autoencoder, dm, latent, estimate=True)
    if not isinstance(module, AuxiliaryModule):
        module.set_guidance(build_guidance(cfg.get("guidance"), module))
        check_sampler_guidance(module.sampler, module.guidance)
    elif (cfg.get("guidance") or {}).get("name", "none") != "none":
        raise ConfigError(f"model={cfg.model} draws no samples: guidance must be none")
    callbacks = _callbacks(cfg, dm, samples=not isinstance(module, AuxiliaryModule))
    return Run(cfg, output_dir(), dm, module, latent, callbacks,
               _checkpoint_callback(callbacks))


def starting_point(run: Run) -> str | None:
    """The checkpoint ``trainer.fit`` continues from (None: step 0). The run's own
    ``last.ckpt`` first (``resume``, or a requeued job); else ``ckpt_path`` from another run:
    whole (``ckpt_mode=resume``) or its weights only (``finetune``, through a callback).
    Checks that the checkpoint fits the network and that checkpoints can be written."""
    cfg, ckpt_dir = run.cfg, Path(run.checkpoint.dirpath)
    if cfg.get("ckpt_mode", "resume") not in CKPT_MODES:
        raise ConfigError(f"ckpt_mode={cfg.ckpt_mode}: must be one of {', '.join(CKPT_MODES)}")
    if cfg.get("ckpt_path") and cfg.resume is True:
        raise ConfigError("resume=true continues this run from its own last.ckpt; ckpt_path "
                          "starts a new run from another one's: pass one of them")
    if cfg.get("ckpt_path"):             # (metadata: also once a requeued job resumes)
        run.started_from = {"ckpt_path": str(cfg.ckpt_path), "ckpt_mode": cfg.ckpt_mode}
    existing = sorted(ckpt_dir.glob("*.ckpt"))
    own = resume_point(cfg.resume, run.out, ckpt_dir, existing)
    if own is not None:
        check_loadable(run.module, own, "resume")
        ckpt = own
    elif cfg.get("ckpt_path"):
        ckpt = str(cfg.ckpt_path)
        if not Path(ckpt).is_file():
            raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint file")
        check_loadable(run.module, ckpt, "ckpt_path",
                       NEW_PARAMETERS if cfg.ckpt_mode == "finetune" else ())
        if cfg.ckpt_mode == "finetune":
            run.callbacks.append(FinetuneFrom(ckpt))
            ckpt = None
        log.info("starting from %s (ckpt_mode=%s)", cfg.ckpt_path, cfg.ckpt_mode)
    else:
        ckpt = None
    check_writable(ckpt_dir, run.module)
    return ckpt


def fit(run: Run, ckpt: str | None) -> None:
    """Open the loggers, save config.yaml, build the Trainer and train from ``ckpt``. A
    pre-emption signal stops training after the step in progress with last.ckpt written
    (``stop_signals_as_sigterm``); a job on a cluster is then requeued."""
    cfg, out = run.cfg, run.out
    run.loggers = build_logger(cfg, out)
    if rank_zero_only.rank == 0:           # (DDP: the other processes run this script too)
        OmegaConf.save(cfg, fresh_path(out / "config.yaml", _step_of(ckpt)), resolve=True)
    run.trainer = _trainer(run)
    trainer, last = run.trainer, Path(run.checkpoint.dirpath) / "last.ckpt"
    start = time.perf_counter()
    with stop_signals_as_sigterm() as stop:
        try:
            trainer.fit(run.module, datamodule=run.dm, ckpt_path=ckpt, weights_only=True)
        except SIGTERMException:
            log.info("stopped at step %d; %s holds it", trainer.global_step, last)
            if stop.requeues:
                record_status(REQUEUED, time.perf_counter() - start,
                              f"pre-empted at step {trainer.global_step}")
            stop.hand_over()        # requeue: submitit's handler, or scontrol under SLURM
            raise Interrupted(f"stopped by a signal at step {trainer.global_step}; "
                              f"{last} holds it: continue with resume=true "
                              f"hydra.run.dir={out}") from None
    run.train_time = time.perf_counter() - start


def _trainer(run: Run) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` (nodes with a ``_target_`` instantiated, e.g. the
    profiler), with the resolved precision and speed switches; under SLURM its cluster
    environment does not requeue by itself (scorelab's stop path does)."""
    cfg = run.cfg
    trainer_args = instantiate(cfg.trainer, _convert_="all")
    trainer_args["precision"] = resolve_precision(trainer_args.get("precision", "auto"),
                                                  trainer_args.get("accelerator", "auto"))
    applied = _apply_speed(cfg, run.module, trainer_args)
    if run.latent is not None:  # every check passed: encode the data, estimate shift and scale
        run.dm.setup("fit")
        summary = latent_summary(run.latent)
        log.info("latent diffusion on %s latents; shift %s, scale %s", summary["latent_shape"],
                 summary["shift"], summary["scale"])
    log.info("precision %s, %s", trainer_args["precision"], applied)
    plugins = list(trainer_args.pop("plugins", None) or []) + cluster_plugins()
    return L.Trainer(**trainer_args, callbacks=run.callbacks, logger=run.loggers or False,
                     plugins=plugins or None, default_root_dir=str(run.out))


def finish(run: Run) -> dict | float:
    """Validate the final (EMA) weights, draw the sample grid from last.ckpt, write
    metrics.json, close the loggers; return what Hydra gets (``optimized_metric``)."""
    cfg, trainer, out = run.cfg, run.trainer, run.out
    trainer.validate(run.module, datamodule=run.dm, verbose=False)   # EMA weights (EMA callback)
    val_loss = trainer.callback_metrics.get("val/loss")
    if not trainer.is_global_zero:
        return {}
    last = Path(run.checkpoint.dirpath) / "last.ckpt"
    ema = any(isinstance(c, EMA) for c in run.callbacks)
    if run.auxiliary:
        result = {metric_key(k): float(v) for k, v in trainer.callback_metrics.items()
                  if k.startswith("val/") and k != "val/loss"}
    else:
        loaded = LoadedCheckpoint(str(last), use_ema=ema)
        loaded.module.set_guidance(run.module.guidance)
        result = _final_samples(cfg, loaded, out, trainer.global_step,
                                getattr(run.dm, "captions", None))
        log_image(trainer.loggers, "samples", Path(result["samples"]), trainer.global_step)
    losses = run.module.epoch_losses if not run.auxiliary else []
    metrics = {
        **({} if run.auxiliary else {
            "train_loss": losses[-1] if losses else None,
            "train_loss_first_epoch": losses[0] if losses else None}),
        "val_loss": float(val_loss) if val_loss is not None else None,
        "val_loss_weights": "ema" if ema else "raw",
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_wall_time_s": round(run.train_time, 2),
        "checkpoint": str(last),
        "tags": list(cfg.get("tags") or []),
        **result,
    }
    if run.started_from is not None:
        metrics["started_from"] = run.started_from
    if run.latent is not None:
        metrics["latent"] = latent_summary(run.latent)
    for cb in run.callbacks:        # the metric callbacks' last values and their settings
        if isinstance(cb, MetricCallback) and cb.history:
            metrics.update({k: v for k, v in cb.history[-1].items() if k != "step"})
            metrics.update(getattr(cb, "settings", {}))
    write_json(fresh_path(out / "metrics.json", trainer.global_step), metrics)
    close_loggers(run.loggers)
    log.info("run directory: %s", out)
    log.info("metrics: %s", metrics)
    return optimized(cfg, metrics)


CKPT_MODES = ("resume", "finetune")


def _apply_speed(cfg, module, trainer_args) -> dict:
    speed = cfg.get("speed") or {}
    gpu = uses_gpu(trainer_args.get("accelerator", "auto"))
    try:
        return apply_speed(getattr(module.model, "backbone", module.model),
                           speed.get("compile", "auto"), speed.get("channels_last", "auto"),
                           gpu=gpu)
    except ValueError as e:
        raise ConfigError(str(e)) from None


RESUME = (False, True, "auto")


def resume_point(resume, out: Path, ckpt_dir: Path, existing: list) -> str | None:
    """The run's own checkpoint to continue from: ``resume=true`` its last.ckpt (it must
    exist); ``auto`` its last.ckpt if there is one, else none for a fresh start (a job
    requeued by the cluster resumes with the same command); ``false`` none, in a directory
    without checkpoints, unless the directory's job was pre-empted and requeued (as
    ``auto``)."""
    if resume not in RESUME:
        raise ConfigError(f"resume={resume}: must be true, false or auto")
    last = ckpt_dir / "last.ckpt"
    if resume is False and last.is_file() and job_status(out).get("status") == REQUEUED:
        log.info("%s: a job that was pre-empted and requeued; it continues", out)
        resume = "auto"
    if resume is False:
        if existing:
            raise ConfigError(f"{ckpt_dir} already holds checkpoints ({existing[0].name}); pass "
                              f"resume=true to continue that run, or use another hydra.run.dir")
        return None
    if not last.is_file():
        if resume is True:
            raise ConfigError(f"resume=true but there is no {last} to resume from")
        return None
    return str(last)


def check_loadable(module, path: str, option: str, may_lack=()) -> None:
    """The checkpoint to start from (``option``: resume or ckpt_path) must be readable and
    fit this config's network (but for parameters named by ``may_lack``: fine-tuning's
    ``NEW_PARAMETERS``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        hint = "; move it away to start afresh" if option == "resume" else ""
        raise ConfigError(f"{option}: {path} is not a loadable checkpoint "
                          f"({type(e).__name__}){hint}") from None
    mismatch = state_mismatch(module, state, may_lack)
    if mismatch:
        raise ConfigError(f"{option}: {path} was trained with another config ({mismatch}); "
                          f"start from it with the run's own network overrides (its "
                          f"config.yaml)")


# Room for a checkpoint: raw and EMA weights, Adam's two moments, and a margin.
def needed_bytes(module) -> int:
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    return 4 * params + 64 * 2 ** 20


def check_writable(directory: Path, module) -> None:
    """Fail now, not at the first checkpoint, if checkpoints cannot be written there (the
    directory, or the nearest existing folder above it, is checked; nothing is created)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot write checkpoints to {directory}: {existing} is not a "
                          f"directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write checkpoints to {directory}: no write permission in "
                          f"{existing}")
    free, need = shutil.disk_usage(existing).free, needed_bytes(module)
    if free < need:
        raise ConfigError(f"{directory}: {free / 2 ** 20:.0f} MiB free on its disk, a checkpoint "
                          f"of this model needs about {need / 2 ** 20:.0f} MiB")


def _step_of(ckpt_path) -> int:
    if ckpt_path is None:
        return 0
    return int(torch.load(ckpt_path, map_location="cpu", weights_only=True)["global_step"])


def _final_samples(cfg, loaded: LoadedCheckpoint, out, step: int,
                   data_captions: list[str] | None = None) -> dict:
    """A grid of cfg.num_samples samples from the checkpoint's (EMA) weights; a model on
    captions draws the dataset's first captions (listed in the result)."""
    settings = loaded.module.sampler
    captions = data_captions[:cfg.num_samples] \
        if data_captions and loaded.module.takes_captions else None
    x, _, nfe, seconds = draw_samples(loaded, settings, cfg.num_samples, cfg.seed,
                                      pick_device("auto"), desc="final samples",
                                      captions=captions)
    labels = [captions[i % len(captions)] for i in range(len(x))] if captions else None
    path = save_samples(x, fresh_path(out / "samples.png", step), loaded.is_image, labels)
    guidance = loaded.module.guidance
    result = {"samples": str(path), "sampler": settings, "nfe": nfe,
              "guidance": describe(guidance),
              "sampling_wall_time_s": round(seconds, 2),
              "samples_from": "ema" if loaded.ema else "raw"}
    if labels is not None:
        result["prompts"] = labels
    return result
