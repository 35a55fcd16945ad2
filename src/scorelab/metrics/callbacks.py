"""The metric callbacks: FID / IS and bits/dim at the end of validation, on every process."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from scorelab.latent.space import nats_to_latent_bits
from scorelab.likelihood.pf_ode import check_likelihood_options
from scorelab.metrics.evaluation import (gather_union, heldout_bits_per_dim, my_chunks,
                                         reference_statistics, resolve_features,
                                         sample_features, sample_metrics)
from scorelab.metrics.features import get_extractor
from scorelab.util.checks import check_values, integer, one_of
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
            for logger in trainer.loggers:
                logger.log_metrics({f"metrics/{k}": v for k, v in values.items()}, step=step)


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


class FIDCallback(MetricCallback):
    """FID (and IS, class accuracy) of ``num_samples`` samples from the module's sampler
    (or ``sampler``) against the dataset's reference statistics.

    Args:
        every_n_steps / at_end / seed: when to run (see ``MetricCallback``).
        num_samples: samples per evaluation, split across processes.
        sampler: sampler settings {name, steps, ...}; None: the module's.
        features: "auto" | "digits" | "inception".
        reference: precomputed statistics file; None: computed from the data once, cached.
        cache_dir: where computed statistics are cached.
        inception_weights: local InceptionV3 weights file.
        batch_size: samples per chunk (the unit that makes results independent of the
            number of processes).
        splits: Inception Score splits.
        datamodule: the run's DataModule; None: the trainer's, at ``setup``.
    """

    def __init__(self, every_n_steps: int = 0, at_end: bool = True, num_samples: int = 1000,
                 sampler: dict | None = None, features: str = "auto", reference=None,
                 cache_dir=None, inception_weights=None, batch_size: int = 250, seed: int = 0,
                 splits: int = 10, datamodule=None):
        super().__init__(every_n_steps, at_end, seed)
        check_values("", dict(num_samples=num_samples, batch_size=batch_size, splits=splits,
                              features=features),
                     {"num_samples": integer(1), "batch_size": integer(1), "splits": integer(1),
                      "features": one_of(("auto", "digits", "inception"), "features")})
        self.num_samples, self.batch_size, self.splits = num_samples, batch_size, splits
        self.sampler = dict(sampler) if sampler else None
        self.reference, self.cache_dir = reference, cache_dir
        self.requested_features, self.inception_weights = features, inception_weights
        self.datamodule, self.extractor = None, None
        self._reference, self.reference_path, self.settings = None, None, {}
        if datamodule is not None:
            self.prepare(datamodule)

    def prepare(self, datamodule) -> None:
        """Pick and build the feature extractor for this data (missing Inception weights
        fail here: at construction with a DataModule, else in ``setup``, before training)."""
        self.datamodule = datamodule
        self.features = resolve_features(self.requested_features, datamodule.name)
        self.extractor = get_extractor(self.features, "cpu", self.inception_weights)

    def setup(self, trainer, pl_module, stage):
        if self.extractor is None:
            self.prepare(trainer.datamodule)

    def reference_statistics(self, trainer) -> dict:
        if self._reference is None:
            dm = self.datamodule
            self._reference, self.reference_path = reference_statistics(
                dm.load(), dm.name, self.extractor, self.reference, self.cache_dir,
                getattr(dm, "root", None))
        return self._reference

    def compute(self, trainer, pl_module, gather) -> dict:
        settings = self.sampler or pl_module.sampler
        num_classes = pl_module.num_classes if pl_module.takes_labels else 0

        def sample_fn(m, y, gen):
            res = pl_module.sample(m, y=y, generator=gen, sampler=settings)
            return res.x, res.nfe

        start = time.perf_counter()
        reference = self.reference_statistics(trainer)
        bar = _progress(trainer, self.num_samples, self.batch_size, "FID/IS samples")
        try:
            local, nfe = sample_features(sample_fn, self.extractor, self.num_samples,
                                         self.batch_size, self.seed, pl_module.device,
                                         num_classes, trainer.global_rank, trainer.world_size,
                                         progress=bar)
        finally:
            bar.close()
        union = gather_union(local, gather)
        done = union["index"].shape[0]
        # Too few finished samples for a covariance (or for the IS splits): no value.
        values = (sample_metrics(union, reference, min(self.splits, done))
                  if done >= min(2, self.num_samples) else {})
        self.settings = {"sampler": settings, "steps": settings["steps"], "nfe": nfe,
                         "num_samples": self.num_samples, "features": self.features,
                         "reference": self.reference_path, "seed": self.seed,
                         "processes": trainer.world_size,
                         "wall_time_s": round(time.perf_counter() - start, 2)}
        if pl_module.guidance is not None:
            self.settings["guidance"] = pl_module.guidance.settings()
        return _stopped_early(values, done, self.num_samples, self.settings)


class BitsPerDimCallback(MetricCallback):
    """Bits/dim (images) or NLL in nats/dim (vectors) of the first ``num_examples``
    held-out examples through the probability-flow ODE, with the EMA weights; for a latent
    model ``latent_bpd``, bits per dimension of the autoencoder's latent.

    Args:
        every_n_steps / at_end / seed: when to run (see ``MetricCallback``).
        num_examples: held-out examples, split across processes in chunks of ``chunk``.
        chunk: examples per ODE solve.
        likelihood: options of ``log_likelihood`` (divergence, n_probes, probe, eps, rtol,
            atol).
        datamodule: the run's DataModule; None: the trainer's, at ``setup``.
    """

    def __init__(self, every_n_steps: int = 0, at_end: bool = True, num_examples: int = 256,
                 chunk: int = 64, likelihood: dict | None = None, seed: int = 0,
                 datamodule=None):
        super().__init__(every_n_steps, at_end, seed)
        check_values("", dict(num_examples=num_examples, chunk=chunk),
                     {"num_examples": integer(1), "chunk": integer(1)})
        check_likelihood_options(dict(likelihood or {}))
        self.num_examples, self.chunk = num_examples, chunk
        self.likelihood = dict(likelihood or {})
        self.datamodule = datamodule
        self.settings: dict = {}
        self.metric_key = "bpd"     # or nll_nats_per_dim / latent_bpd, known at compute

    def setup(self, trainer, pl_module, stage):
        if self.datamodule is None:
            self.datamodule = trainer.datamodule

    def compute(self, trainer, pl_module, gather) -> dict:
        val = self.datamodule.val_set
        n = min(self.num_examples, len(val))
        latent = pl_module.latent
        if latent is None:
            x = torch.stack([val[i][0] for i in range(n)]).to(pl_module.device)
        else:
            # One latent draw per example, the same on every process.
            gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            x = pl_module.model_input(self.datamodule.posteriors(val, range(n))
                                      .to(pl_module.device), gen)
        y = torch.tensor([int(val[i][1]) for i in range(n)], device=pl_module.device)
        model = pl_module.model
        start = time.perf_counter()
        pixels = pl_module.is_image and latent is None
        bar = _progress(trainer, n, self.chunk, "bits/dim examples" if pixels else "NLL examples")
        try:
            local, nfe = heldout_bits_per_dim(
                lambda yb: model.prediction_fn(yb if pl_module.conditional else None),
                model.path, x, y, self.chunk, self.seed, pixels,
                trainer.global_rank, trainer.world_size, progress=bar, **self.likelihood)
        finally:
            bar.close()
        values = gather_union(local, gather)["value"]
        done = values.shape[0]
        key = "bpd" if pixels else "nll_nats_per_dim"
        if latent is not None:
            # bits per dimension of the autoencoder's latent z (not of pixels)
            key, values = "latent_bpd", nats_to_latent_bits(values, latent.log_scale_per_dim())
        self.metric_key = key
        self.settings = {**self.likelihood, "num_examples": n, "chunk": self.chunk,
                         "nfe_last_chunk": nfe, "seed": self.seed,
                         "processes": trainer.world_size,
                         "wall_time_s": round(time.perf_counter() - start, 2)}
        if latent is not None:
            self.settings["space"] = ("latent z of the autoencoder (continuous density, one "
                                      "posterior draw per example; not pixel bits/dim)")
        result = {key: float(values.mean()),
                  f"{key}_stderr": float(values.std() / math.sqrt(done))} if done else {}
        return _stopped_early(result, done, n, self.settings)
