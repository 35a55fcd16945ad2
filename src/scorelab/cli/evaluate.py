"""python evaluate.py ckpt=PATH [metrics=[fid,is,bpd]] ...: metrics of a checkpoint, written
to metrics.json with the settings of every number, and printed as a table.

* loss: validation loss of the held-out split (EMA weights by default).
* ``metrics=[fid,is,bpd]`` (any of the registered metrics, ``conf/metrics``: fid, is, kid,
  prdc, accuracy, class_fid, caption_accuracy, half_fid, energy, bpd), computed by the
  training callback (``scorelab.metrics.callbacks.Metrics``) in one validation pass, so they
  run on as many processes as the ``trainer`` group gives (``trainer=ddp trainer.devices=2``)
  and give the same numbers as on one:
  - bpd: bits/dim of ``metrics.bpd.num_examples`` held-out examples (PF-ODE); for a
    latent model ``latent_bpd``, bits per dimension of the autoencoder's latent; on the
    Gaussian mixture also ``nll_gap`` to the exact NLL;
  - the sample metrics (fid, is, kid, prdc, ...): one pass of ``num_samples`` samples with
    the ``sampler`` group (default: the checkpoint's), guided as the ``guidance`` group
    says, featurised once per extractor (``features=...`` or ``metrics.<name>.features``)
    and compared with the dataset's cached reference; class accuracy for conditional (or
    classifier-guided) models.
  A model on captions is sampled for ``prompts`` (the held-out captions by default; ``seen``
  or a file); on two-digit canvases (``data=mnist5k_pairs``) caption accuracy comes along,
  and ``half_fid`` compares the canvases' halves with MNIST-5k.
* ``evaluate.py -m guidance.scale=1,2,3,5 ...`` sweeps a guidance scale, one run directory each.
* samples (``num_samples`` > 0 without any sample metric): writes samples.png / samples.npz.
"""

from __future__ import annotations

import lightning as L
from omegaconf import DictConfig, OmegaConf

from scorelab.metrics.callbacks import Metrics
from scorelab.metrics.registry import SampleMetric
from scorelab.util.checks import integer, optional
from scorelab.cli.build import check_config_values, make, pick_device
from scorelab.cli.common import log, optimized, output_dir, reports_errors, write_json
from scorelab.cli.extras import apply_extras
from scorelab.cli.latent import checkpoint_datamodule
from scorelab.data.captions import evaluation_prompts
from scorelab.cli.pretrained import model_source, weights_of
from scorelab.cli.sample import draw_samples, load_guided, resolve_sampler, save_sample_files
from scorelab.util.errors import ConfigError, Interrupted
from scorelab.guidance.predictions import describe
from scorelab.util.interrupt import requested, stop_on_signals
from scorelab.latent.space import latent_summary
from scorelab.metrics.features import FeatureWeightsMissing


# Values of evaluate.py's own keys, checked before the checkpoint is read.
EVALUATE_RULES = {"seed": integer(), "num_samples": integer(0),
                  "sample_batch_size": integer(1), "batch_size": optional(integer(1))}


def _metric_callbacks(cfg, dm, loaded) -> list:
    """The selected metrics as the training callback, run once at validation. Built (and
    their references loaded) before anything runs, so that a bad option or missing
    feature weights or statistics stop evaluate.py at once."""
    selected = cfg.get("metrics") or {}
    if not selected:
        return []
    metrics = {name: make(cfg, f"metrics.{name}") for name in selected}
    wants_samples = [n for n, m in metrics.items() if isinstance(m, SampleMetric)]
    if wants_samples and cfg.num_samples <= 0:
        raise ConfigError(f"metrics {', '.join(wants_samples)} need num_samples > 0 (e.g. "
                          f"num_samples=1000)")
    settings = resolve_sampler(cfg.sampler, loaded.module.sampler, loaded.module.model,
                               loaded.module.guidance)
    try:
        return [Metrics(metrics, num_samples=cfg.num_samples if wants_samples else 0,
                        sampler=settings, batch_size=cfg.sample_batch_size, seed=cfg.seed,
                        datamodule=dm, prompts=cfg.get("prompts"))]
    except (FeatureWeightsMissing, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"metrics: {e}") from None


def _check_prompts(cfg, loaded, dm) -> None:
    """``prompts`` only for a model on captions, and a split the data has or a file."""
    if not loaded.module.takes_captions:
        if cfg.get("prompts") is not None:
            raise ConfigError("prompts: this checkpoint was not trained on captions")
        return
    try:
        evaluation_prompts(dm, cfg.get("prompts"), 1, cfg.seed)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None


def _validate(cfg, loaded, dm, callbacks, out):
    """One validation pass (validation loss, and the metric callbacks) on the processes of
    the ``trainer`` group (``trainer=ddp trainer.devices=2``)."""
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    keep = {k: args[k] for k in ("accelerator", "devices", "num_nodes", "strategy") if k in args}
    trainer = L.Trainer(**keep, precision="32-true", logger=False, callbacks=list(callbacks),
                        enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=str(out))
    trainer.validate(loaded.module, datamodule=dm, verbose=False)
    return trainer


def _results(trainer, dm, callbacks) -> dict:
    out = {"val_loss": float(trainer.callback_metrics["val/loss"]),
           "num_val_examples": len(dm.val_set)}
    for cb in callbacks:
        out.update({k: v for k, v in cb.history[-1].items() if k != "step"})
        out.update(cb.settings)
    return out


def _samples(cfg, loaded, dm, device, out) -> dict:
    settings = resolve_sampler(cfg.sampler, loaded.module.sampler, loaded.module.model,
                               loaded.module.guidance)
    prompts = evaluation_prompts(dm, cfg.get("prompts"), cfg.num_samples, cfg.seed) \
        if loaded.module.takes_captions else None
    x, labels, nfe, seconds = draw_samples(loaded, settings, cfg.num_samples, cfg.seed, device,
                                           captions=prompts)
    info = {"sampler": settings, "num_samples": cfg.num_samples, "nfe": nfe,
            "wall_time_s": round(seconds, 2)}
    if prompts is not None:
        info["prompts"] = prompts[:len(x)]
    if len(x):
        save_sample_files(x, labels, nfe, out, loaded.is_image,
                          prompts[:len(x)] if prompts is not None else None)
    if len(x) < cfg.num_samples:         # a stop request: the finished batches are kept
        info["interrupted"] = f"{len(x)} of {cfg.num_samples}"
    return {"samples": info}


def _table(metrics: dict) -> str:
    """Numbers first, one per line, then the settings they were computed with."""
    numbers = [(k, v) for k, v in metrics.items() if isinstance(v, float)]
    rest = [(k, v) for k, v in metrics.items() if not isinstance(v, float)]
    width = max(len(k) for k, _ in metrics.items())
    lines = [f"{k:>{width}}  {v:.6g}" for k, v in numbers] + ["-" * (width + 12)]
    return "\n".join(lines + [f"{k:>{width}}  {v}" for k, v in rest])


@reports_errors
def main(cfg: DictConfig) -> dict:
    # SIGTERM / SIGUSR1: stop within one chunk of samples or examples; metrics.json keeps
    # the metrics that finished and the partial_* values of the one that was stopped.
    apply_extras(cfg)
    with stop_on_signals():
        return _main(cfg)


def _main(cfg: DictConfig) -> dict:
    out = output_dir()
    check_config_values(cfg, EVALUATE_RULES)
    L.seed_everything(cfg.seed, verbose=False)
    if model_source(cfg) == "pretrained" and cfg.get("data") is None:
        raise ConfigError("evaluate.py with model=diffusers needs data=<dataset> (its held-out "
                          "split and reference statistics), e.g. data=mnist5k")
    loaded = load_guided(cfg)
    dm = checkpoint_datamodule(loaded, cfg.batch_size)
    # sampler.variance=analytic estimates its moments on the run's training data
    loaded.module.analytic_data = dm
    _check_prompts(cfg, loaded, dm)
    callbacks = _metric_callbacks(cfg, dm, loaded)
    trainer = _validate(cfg, loaded, dm, callbacks, out)
    if not trainer.is_global_zero:
        if requested():
            raise Interrupted(f"stopped by signal {requested()}", requested())
        return {}
    metrics = {"ckpt": str(loaded.path), **weights_of(loaded),
               "global_step": loaded.global_step, "seed": cfg.seed,
               "processes": trainer.world_size,
               "loss": OmegaConf.to_container(loaded.cfg.loss) if "loss" in loaded.cfg
               else None,
               "guidance": describe(loaded.module.guidance),
               "latent": latent_summary(loaded.module.latent),
               **_results(trainer, dm, callbacks)}
    sampled = any(cb.evaluation is not None and cb.evaluation.metrics for cb in callbacks)
    if cfg.num_samples > 0 and not sampled and not requested():
        accelerator = cfg.trainer.accelerator
        device = pick_device({"gpu": "cuda"}.get(accelerator, accelerator))
        metrics.update(_samples(cfg, loaded, dm, device, out))
    if requested():
        metrics["interrupted"] = _stopped(metrics)
    write_json(out / "metrics.json", metrics)
    print(_table(metrics))
    log.info("wrote %s", out / "metrics.json")
    if requested():
        raise Interrupted(f"stopped by signal {requested()}: {metrics['interrupted']}; "
                          f"{out / 'metrics.json'} keeps what finished", requested())
    return optimized(cfg, metrics)


def _stopped(metrics: dict) -> str:
    """What a stop request left unfinished, from the settings of each computation."""
    parts = [f"{key.removesuffix('_settings')} {s['completed']}"
             for key, s in metrics.items()
             if isinstance(s, dict) and "completed" in s]
    samples = metrics.get("samples", {})
    if samples.get("interrupted"):
        parts.append(f"samples {samples['interrupted']}")
    return (f"signal {requested()}: " + ", ".join(parts) if parts
            else f"signal {requested()} after the last computation")
