"""python train.py [overrides]: train, then leave in the run directory the last checkpoint,
a sample grid from the EMA weights (guided as the ``guidance`` group says), metrics.json and
the composed config. ``model=classifier`` trains a noisy classifier, ``model=autoencoder`` a
stage-1 autoencoder instead (no samples; their validation metrics in metrics.json).
``autoencoder=<source>`` trains the diffusion in that autoencoder's latent space (samples,
grids and FID decoded to pixels)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from scorelab.metrics.callbacks import FIDCallback, MetricCallback
from scorelab.training.callbacks import EMA, RandomStates, SampleGrid, log_image
from scorelab.training.auxiliary_module import AuxiliaryModule
from scorelab.cli.build import (LoadedCheckpoint, build_any_module, build_datamodule,
                                check_training_config, make, pick_device, state_mismatch)
from scorelab.cli.guide import build_guidance
from scorelab.cli.latent import build_latent, latent_datamodule
from scorelab.cli.loggers import build_logger, finish
from scorelab.cli.common import (REQUEUED, fresh_path, log, optimized, output_dir,
                                 record_status, reports_errors, write_json)
from scorelab.cli.sample import draw_samples
from scorelab.util.errors import ConfigError, Interrupted
from scorelab.guidance.predictions import describe
from scorelab.latent.space import latent_summary
from scorelab.util.speed import apply_speed, check_switches, resolve_precision, uses_gpu
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
        if isinstance(made[name], FIDCallback):
            try:
                made[name].prepare(dm)      # missing feature weights stop the run here
            except ValueError as e:
                raise ConfigError(f"callbacks.{name}: {e}") from None
    first = [c for c in made.values() if isinstance(c, (SampleGrid, MetricCallback))]
    return first + [c for c in made.values() if c not in first] + [RandomStates()]


def _checkpoint_callback(callbacks):
    for c in callbacks:
        if isinstance(c, L.pytorch.callbacks.ModelCheckpoint):
            return c
    raise ConfigError("callbacks.checkpoint is null: a training run must save checkpoints")


@reports_errors
def main(cfg: DictConfig) -> dict:
    out = output_dir()
    check_training_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    latent = build_latent(cfg.get("autoencoder"), dm.shape)
    module = build_any_module(cfg, dm.shape, dm.num_classes, dm.is_image, latent=latent)
    if latent is not None:
        dm = latent_datamodule(cfg.autoencoder, dm, latent, estimate=True)
    auxiliary = isinstance(module, AuxiliaryModule)
    if not auxiliary:
        module.set_guidance(build_guidance(cfg.get("guidance"), module))
    elif (cfg.get("guidance") or {}).get("name", "none") != "none":
        raise ConfigError(f"model={cfg.model} draws no samples: guidance must be none")
    callbacks = _callbacks(cfg, dm, samples=not auxiliary)
    ckpt_cb = _checkpoint_callback(callbacks)
    existing = sorted(Path(ckpt_cb.dirpath).glob("*.ckpt")) if ckpt_cb.dirpath else []
    resume_from = resume_point(cfg.resume, out, Path(ckpt_cb.dirpath), existing)
    if resume_from is not None:
        check_resumable(module, resume_from)
    if ckpt_cb.dirpath:
        check_writable(Path(ckpt_cb.dirpath), module)
    logger = build_logger(cfg, out)
    if rank_zero_only.rank == 0:           # (DDP: the other processes run this script too)
        OmegaConf.save(cfg, fresh_path(out / "config.yaml", _step_of(resume_from)),
                       resolve=True)
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_args["precision"] = resolve_precision(trainer_args.get("precision", "auto"),
                                                  trainer_args.get("accelerator", "auto"))
    applied = _apply_speed(cfg, module, trainer_args)
    if latent is not None:      # every check passed: encode the data, estimate shift and scale
        dm.setup("fit")
        summary = latent_summary(latent)
        log.info("latent diffusion on %s latents; shift %s, scale %s", summary["latent_shape"],
                 summary["shift"], summary["scale"])
    log.info("precision %s, %s", trainer_args["precision"], applied)
    trainer = L.Trainer(**trainer_args, callbacks=callbacks, logger=logger,
                        default_root_dir=str(out))
    start = time.perf_counter()
    with stop_signals_as_sigterm() as stop:
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=resume_from, weights_only=True)
        except SIGTERMException:
            log.info("stopped at step %d; %s holds it", trainer.global_step, ckpt_cb.last_path)
            if stop.requeues:
                record_status(REQUEUED, time.perf_counter() - start,
                              f"pre-empted at step {trainer.global_step}")
            stop.hand_over()        # a submitit job: submitit requeues it and exits here
            raise Interrupted(f"stopped by a signal at step {trainer.global_step}; "
                              f"{ckpt_cb.last_path} holds it: continue with resume=true "
                              f"hydra.run.dir={out}") from None
    train_time = time.perf_counter() - start
    trainer.validate(module, datamodule=dm, verbose=False)   # EMA weights (EMA callback)
    val_loss = trainer.callback_metrics.get("val/loss")
    if not trainer.is_global_zero:
        return {}
    last = Path(ckpt_cb.dirpath) / "last.ckpt"
    ema = any(isinstance(c, EMA) for c in callbacks)
    if auxiliary:
        result = {f"val_{k[4:]}": float(v) for k, v in trainer.callback_metrics.items()
                  if k.startswith("val/") and k != "val/loss"}
    else:
        loaded = LoadedCheckpoint(str(last), use_ema=ema)
        loaded.module.set_guidance(module.guidance)
        result = _final_samples(cfg, loaded, out, trainer.global_step)
        log_image(trainer.loggers, "samples", Path(result["samples"]), trainer.global_step)
    losses = {} if auxiliary else {
        "train_loss": module.epoch_losses[-1] if module.epoch_losses else None,
        "train_loss_first_epoch": module.epoch_losses[0] if module.epoch_losses else None}
    metrics = {
        **losses,
        "val_loss": float(val_loss) if val_loss is not None else None,
        "val_loss_weights": "ema" if ema else "raw",
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_wall_time_s": round(train_time, 2),
        "checkpoint": str(last),
        **result,
    }
    if latent is not None:
        metrics["latent"] = latent_summary(latent)
    for cb in callbacks:        # the metric callbacks' values at the end (FID, bits/dim)
        if isinstance(cb, MetricCallback) and cb.history:
            metrics.update({k: v for k, v in cb.history[-1].items() if k != "step"})
    write_json(fresh_path(out / "metrics.json", trainer.global_step), metrics)
    finish(logger)
    log.info("run directory: %s", out)
    log.info("metrics: %s", metrics)
    return optimized(cfg, metrics)


class _Stop:
    """The pre-emption signal that ``stop_signals_as_sigterm`` turned into SIGTERM, and the
    handler it displaced."""

    def __init__(self):
        self.received: list[int] = []
        self.displaced: dict = {}

    @property
    def requeues(self) -> bool:
        """Whether ``hand_over`` gives the signal to a handler that requeues (submitit's)."""
        return bool(self.received) and callable(self.displaced.get(self.received[0]))

    def hand_over(self) -> None:
        if self.requeues:
            self.displaced[self.received[0]](self.received[0], None)


@contextlib.contextmanager
def stop_signals_as_sigterm():
    """Scheduler signals that announce pre-emption do what SIGTERM does in training:
    Lightning stops after the step in progress and ``Checkpoint`` saves it. These are
    SIGUSR1 (on SLURM with auto-requeue Lightning handles it itself: checkpoint and
    requeue) and, in a job that submitit launched (``hydra/launcher=slurm``), submitit's
    pre-emption signal (``$SUBMITIT_PREEMPT_SIGNAL``, USR2 by default), which submitit would
    otherwise answer by requeueing at once, mid-step and without a checkpoint.

    Yields a ``_Stop``: once that checkpoint is written, ``hand_over()`` passes the signal
    to the handler it displaced. submitit's requeues the job; its checkpoint hook resubmits
    the same overrides, so the job comes back to its directory, where ``resume_point`` finds
    it marked as requeued and continues it."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment
    names = [] if SLURMEnvironment.detect() else ["SIGUSR1"]
    if os.environ.get("SUBMITIT_EXECUTOR"):
        names.append("SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
                     .removeprefix("SIG"))
    signals = {getattr(signal, n) for n in names if hasattr(signal, n)} - {signal.SIGTERM}
    stop = _Stop()

    def forward(signum, frame):
        stop.received.append(signum)
        os.kill(os.getpid(), signal.SIGTERM)

    stop.displaced = {s: signal.signal(s, forward) for s in signals}
    try:
        yield stop
    finally:
        for s, handler in stop.displaced.items():
            signal.signal(s, handler)


def _apply_speed(cfg, module, trainer_args) -> dict:
    speed = cfg.get("speed") or {}
    gpu = uses_gpu(trainer_args.get("accelerator", "auto"))
    try:
        check_switches(speed, gpu)
        return apply_speed(getattr(module.model, "backbone", module.model), speed.get("compile", "auto"),
                           speed.get("channels_last", "auto"), gpu=gpu)
    except ValueError as e:
        raise ConfigError(str(e)) from None


RESUME = (False, True, "auto")


def resume_point(resume, out: Path, ckpt_dir: Path, existing: list) -> str | None:
    """The checkpoint to continue from: ``resume=true`` the run's last checkpoint (it must
    exist); ``auto`` the newest of it and Lightning's SLURM requeue checkpoint
    (``hpc_ckpt_N.ckpt``), or none for a fresh start (a job requeued by the cluster resumes
    with the same command); ``false`` none, in a directory without checkpoints, unless the
    directory's job was pre-empted and handed to submitit for requeueing (as ``auto``)."""
    if resume not in RESUME:
        raise ConfigError(f"resume={resume}: must be true, false or auto")
    candidates = [p for p in [ckpt_dir / "last.ckpt", *out.glob("hpc_ckpt_*.ckpt")]
                  if p.is_file()]
    if resume is False and candidates and job_status(out).get("status") == REQUEUED:
        log.info("%s: a job that was pre-empted and requeued; it continues", out)
        resume = "auto"
    if resume is False:
        if existing:
            raise ConfigError(f"{ckpt_dir} already holds checkpoints ({existing[0].name}); pass "
                              f"resume=true to continue that run, or use another hydra.run.dir")
        return None
    if not candidates:
        if resume is True:
            raise ConfigError(f"resume=true but there is no {ckpt_dir / 'last.ckpt'} to resume "
                              f"from")
        return None
    steps = {p: _step_or_unreadable(p) for p in candidates}     # each file read once
    return str(max(candidates, key=steps.__getitem__))


def _step_or_unreadable(path: Path) -> int:
    """The checkpoint's step, or -1 when it cannot be read (check_resumable reports it)."""
    try:
        return _step_of(str(path))
    except Exception:  # noqa: BLE001
        return -1


def check_resumable(module, path: str) -> None:
    """The checkpoint to resume must be readable and fit this config's network."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise ConfigError(f"resume: {path} is not a loadable checkpoint "
                          f"({type(e).__name__}); move it away to start afresh") from None
    mismatch = state_mismatch(module, state)
    if mismatch:
        raise ConfigError(f"resume: {path} was trained with another config ({mismatch}); "
                          f"resume with the run's own overrides (its config.yaml)")


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


def _final_samples(cfg, loaded: LoadedCheckpoint, out, step: int) -> dict:
    """A grid of cfg.num_samples samples from the checkpoint's (EMA) weights."""
    settings = loaded.module.sampler
    x, _, nfe, seconds = draw_samples(loaded, settings, cfg.num_samples, cfg.seed,
                                      pick_device("auto"), desc="final samples")
    path = save_samples(x, fresh_path(out / "samples.png", step), loaded.is_image)
    guidance = loaded.module.guidance
    return {"samples": str(path), "sampler": settings, "nfe": nfe,
            "guidance": describe(guidance),
            "sampling_wall_time_s": round(seconds, 2),
            "samples_from": "ema" if loaded.ema else "raw"}
