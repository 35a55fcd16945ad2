"""The metric callback: the registered metrics at the end of validation, on every process."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from scorelab.data.captions import encode_prompts, evaluation_prompts
from scorelab.metrics.caption import CaptionAccuracy
from scorelab.metrics.evaluation import gather_union, my_chunks, sample_features
from scorelab.metrics.registry import HeldoutMetric, SampleMetric, build_metric
from scorelab.metrics.sample_pass import SampleEvaluation
from scorelab.metrics.sample_quality import ClassAccuracy
from scorelab.util.checks import check_values, integer
from scorelab.util.progress import WorkProgress


class MetricCallback(L.Callback):
    """Runs ``compute`` at the end of validation (EMA weights swapped in, so put it before
    EMA like SampleGrid) every ``every_n_steps`` training steps, and in the validation that
    train.py runs after training when ``at_end``. Every process takes part (DDP: each
    computes its share, results are gathered); rank 0 logs ``metrics/<name>``."""

    def __init__(self, every_n_steps: int = 0, at_end: bool = True, seed: int = 0):
        check_values("", dict(every_n_steps=every_n_steps, seed=seed),
                     {"every_n_steps": integer(0), "seed": integer()})
        self.every_n_steps, self.at_end, self.seed = every_n_steps, at_end, seed
        self.history: list[dict] = []
        self._last = -1

    def _due(self, trainer) -> bool:
        if trainer.sanity_checking or trainer.global_step == self._last:
            return False
        if trainer.state.fn == TrainerFn.VALIDATING:
            return self.at_end
        return self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0

    def on_validation_epoch_end(self, trainer, pl_module):
        if not self._due(trainer):
            return
        self._last = step = trainer.global_step
        gather = pl_module.all_gather if trainer.world_size > 1 else None
        # Validation runs in inference mode; the likelihood's divergence needs autograd.
        with torch.inference_mode(False):
            values = self.compute(trainer, pl_module, gather)
        self.history.append({"step": step, **values})
        if trainer.is_global_zero:
            # loggers take scalars only (TensorBoard refuses the per-class lists, which stay
            # in metrics.json); bool is an int but no metric
            scalars = {f"metrics/{k}": v for k, v in values.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=step)


def _stopped_early(values: dict, done: int, wanted: int, settings: dict) -> dict:
    """Values computed on the ``done`` of ``wanted`` units that finished before a stop
    request (``scorelab.util.interrupt``): renamed ``partial_<name>`` so that no table or sweeper
    takes them for the full metric; ``settings["completed"]`` says how many."""
    if done == wanted:
        return values
    settings["completed"] = f"{done} of {wanted}"
    return {f"partial_{k}": v for k, v in values.items()}


def _progress(trainer, n: int, chunk: int, desc: str) -> WorkProgress:
    """A bar over this process's share of n units done in chunks (shown on rank 0 only)."""
    mine = sum(size for _, _, size in my_chunks(n, chunk, trainer.global_rank,
                                                 trainer.world_size))
    if trainer.world_size > 1:
        desc = f"{desc} (rank 0 of {trainer.world_size})"
    return WorkProgress(mine, desc, enabled=trainer.is_global_zero)


class Metrics(MetricCallback):
    """The registered metrics (``conf/metrics``, ``scorelab.metrics.registry``) of the
    module: the sample metrics in one pass of ``num_samples`` samples from the module's
    sampler (or ``sampler``), drawn and featurised once; the held-out metrics (bits/dim)
    each in its own pass.

    Args:
        metrics: name -> metric (built by Hydra from ``conf/metrics/<name>.yaml``) or its
            options (built through the registry).
        every_n_steps / at_end / seed: when to run (see ``MetricCallback``).
        num_samples: samples per evaluation, split across processes.
        sampler: sampler settings {name, steps, ...}; None: the module's.
        batch_size: samples per chunk (the unit that makes results independent of the
            number of processes).
        datamodule: the run's DataModule; None: the trainer's, at ``setup``.
        prompts: what a model on captions is sampled for: a split of the dataset's captions
            (``unseen``, the held-out pairs of ``data=mnist5k_pairs``, the default; ``seen``)
            or a file of prompts, taken in turn. Their digits, where they name two, give
            caption accuracy.

    ``settings`` after a computation: ``sample_settings`` and ``<key>_settings`` of each
    held-out metric (the values' settings, as metrics.json holds them).
    """

    def __init__(self, metrics: dict | None = None, every_n_steps: int = 0,
                 at_end: bool = True, num_samples: int = 500, sampler: dict | None = None,
                 batch_size: int = 250, seed: int = 0, datamodule=None,
                 prompts: str | None = None):
        super().__init__(every_n_steps, at_end, seed)
        check_values("", dict(num_samples=num_samples, batch_size=batch_size),
                     {"num_samples": integer(0), "batch_size": integer(1)})
        built = {name: build_metric(name, m) for name, m in (metrics or {}).items()}
        self.sample_metrics = {k: m for k, m in built.items() if isinstance(m, SampleMetric)}
        self.heldout = {k: m for k, m in built.items() if isinstance(m, HeldoutMetric)}
        if self.sample_metrics and num_samples < 2:
            raise ValueError(f"num_samples: {', '.join(self.sample_metrics)} need at least 2 "
                             f"samples, got {num_samples}")
        self.num_samples, self.batch_size, self.prompts = num_samples, batch_size, prompts
        self.sampler = dict(sampler) if sampler else None
        self.datamodule, self.evaluation, self.settings = None, None, {}
        if datamodule is not None:
            self.prepare(datamodule)

    def prepare(self, datamodule) -> None:
        """Build the extractors and load (or compute and cache) the references: missing
        weights or statistics stop a run here, before any training or sampling.
        Class accuracy comes along on the first metric's features and feature options (the
        same extractor, so no second one is built), caption accuracy on the canvases' digit
        halves; they are reported for conditional models (on labels; on captions naming two
        digits) whose features have logits."""
        self.datamodule = datamodule
        metrics, implicit = dict(self.sample_metrics), []
        if metrics:
            first = next(iter(metrics.values()))
            implied = {"accuracy": lambda: ClassAccuracy(features=first.extractor_spec()),
                       "caption_accuracy": CaptionAccuracy}
            for name, build in implied.items():
                if name not in metrics:
                    metrics[name] = build()
                    implicit.append(name)
        if self.prompts is not None and self.sample_metrics:
            # a missing file or unknown split stops the run now
            evaluation_prompts(datamodule, self.prompts, 1, self.seed)
        self.evaluation = SampleEvaluation(metrics, datamodule, implicit)
        self.evaluation.references()

    def setup(self, trainer, pl_module, stage):
        if self.datamodule is None:
            self.datamodule = trainer.datamodule
        if self.evaluation is None and self.sample_metrics:
            self.prepare(self.datamodule)

    def compute(self, trainer, pl_module, gather) -> dict:
        values, self.settings = {}, {}
        if self.evaluation is not None and self.evaluation.metrics:
            values.update(self._samples(trainer, pl_module, gather))
        for metric in self.heldout.values():
            values.update(self._heldout(metric, trainer, pl_module, gather))
        return values

    def _samples(self, trainer, pl_module, gather) -> dict:
        settings = self.sampler or pl_module.sampler
        num_classes = pl_module.num_classes if _conditional(pl_module) else 0

        def sample_fn(m, y, gen):
            res = pl_module.sample(m, y=y, generator=gen, sampler=settings)
            return res.x, res.nfe

        conditions, prompts = None, None
        if getattr(pl_module, "takes_captions", False):
            conditions, prompts = self._caption_conditions(pl_module)

        start = time.perf_counter()
        bar = _progress(trainer, self.num_samples, self.batch_size, "FID/IS samples")
        try:
            local, nfe = sample_features(sample_fn, self.evaluation.extractors,
                                         self.num_samples, self.batch_size, self.seed,
                                         pl_module.device, num_classes, trainer.global_rank,
                                         trainer.world_size, progress=bar,
                                         conditions=conditions)
        finally:
            bar.close()
        union = gather_union(local, gather)
        done = union["index"].shape[0]
        # Too few finished samples for a covariance: no value.
        values = self.evaluation.compute(union) if done >= 2 else {}
        out = {"sampler": settings, "steps": settings["steps"], "nfe": nfe,
               "num_samples": self.num_samples, **self.evaluation.settings(),
               "metrics": sorted(getattr(self.evaluation, "computed", [])), "seed": self.seed,
               "processes": trainer.world_size,
               "wall_time_s": round(time.perf_counter() - start, 2)}
        if self.evaluation.skipped:
            out["skipped"] = dict(self.evaluation.skipped)
        if pl_module.guidance is not None:
            out["guidance"] = pl_module.guidance.settings()
        if prompts is not None:
            out["prompts"] = prompts
        self.settings["sample_settings"] = out
        return _stopped_early(values, done, self.num_samples, out)

    def _caption_conditions(self, pl_module):
        """``conditions`` for ``sample_features``: sample i gets prompt i of the prompt set
        (its token ids) and, where the prompts name two digits, those (row ``digits``).
        Returns (conditions, what the prompts were)."""
        prompts = evaluation_prompts(self.datamodule, self.prompts, self.num_samples,
                                     self.seed)
        ids = encode_prompts(pl_module.tokenizer, prompts).to(pl_module.device)
        named = getattr(self.datamodule, "named_digits", None)
        digits = named(prompts) if named is not None else None
        digits = digits.to(pl_module.device) if digits is not None else None

        def conditions(index):
            return ids[index], ({"digits": digits[index]} if digits is not None else {})
        return conditions, {"from": self.prompts or "unseen", "distinct": len(set(prompts)),
                            "first": prompts[:4]}

    def _heldout(self, metric, trainer, pl_module, gather) -> dict:
        start = time.perf_counter()
        pixels = pl_module.is_image and pl_module.latent is None
        n, items = metric.items(self.datamodule)
        what = ("bits/dim" if pixels else "NLL") if metric.name == "bpd" else metric.name
        bar = _progress(trainer, n, metric.chunk, f"{what} {items}")
        try:
            values, done, wanted, settings = metric.run(
                pl_module, self.datamodule, self.seed, trainer.global_rank,
                trainer.world_size, gather, bar)
        finally:
            bar.close()
        settings["wall_time_s"] = round(time.perf_counter() - start, 2)
        self.settings[f"{metric.key}_settings"] = settings
        return _stopped_early(values, done, wanted, settings)


def _conditional(pl_module) -> bool:
    return bool(getattr(pl_module, "takes_labels", False))
