"""Lightning callbacks: EMA of the weights, sample grids, FID / IS and bits/dim."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from scorelab.checks import check_values, integer, one_of
from scorelab.latent import nats_to_latent_bits
from scorelab.likelihood import check_likelihood_options
from scorelab.metrics.evaluation import (gather_union, heldout_bits_per_dim, my_chunks,
                                         reference_statistics, resolve_features,
                                         sample_features, sample_metrics)
from scorelab.metrics.features import get_extractor
from scorelab.progress import WorkProgress
from scorelab.visualize import save_samples


def ema_with_warmup(decay: float, warmup: bool):
    """EMA update avg <- avg + (1 - d)(p - avg) with d = min(decay, (1 + n) / (10 + n)) when
    ``warmup`` (n = updates so far), so short runs are not dominated by the random init."""
    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor):
        d = torch.clamp((1 + num_averaged) / (10 + num_averaged), max=decay) if warmup \
            else torch.full_like(num_averaged, decay, dtype=torch.float32)
        return averaged.lerp(current, (1 - d).to(averaged.dtype))
    return avg_fn


class EMA(WeightAveraging):
    """Exponential moving average of the weights, on Lightning's WeightAveraging.

    Validation runs on the EMA weights; checkpoints hold the EMA weights in ``state_dict``
    and the raw ones in ``current_model_state`` (Lightning's layout). Unlike the base
    callback, the raw weights stay in the module at the end of training, so that the final
    checkpoint holds both and a resumed run continues from the raw weights.

    Args:
        decay: EMA decay (Score SDE: 0.9999 for VE, 0.9999 / 0.999 elsewhere).
        warmup: use the warm-up decay min(decay, (1 + n) / (10 + n)).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        super().__init__(use_buffers=True, avg_fn=ema_with_warmup(decay, warmup))
        self.decay = decay

    def on_train_end(self, trainer, pl_module):
        """Leave the raw weights in place (the base class copies the average over them)."""

    swapped = False     # the average is in the module (during validation)

    def on_validation_epoch_start(self, trainer, pl_module):
        super().on_validation_epoch_start(trainer, pl_module)
        self.swapped = self._average_model is not None

    def on_validation_epoch_end(self, trainer, pl_module):
        super().on_validation_epoch_end(trainer, pl_module)
        self.swapped = False

    def restore_raw(self, pl_module) -> None:
        """Put the raw weights back if a validation was stopped with the average swapped in
        (a checkpoint must never take the average for the raw weights)."""
        if self.swapped:
            self._swap_models(pl_module)
            self.swapped = False


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, plus ``last.ckpt`` written at the end of training even
    when the last periodic save fell on an earlier step (ModelCheckpoint skips it then), so
    the run's final weights are always on disk, and when training stops on SIGTERM
    (pre-emption: training stops after the step in progress, on every process), so that
    ``resume=true`` continues from that step. Lightning writes each file through a
    transaction: never half-written. A resumed run writes its ``last.ckpt`` over the one it
    resumed from (no ``last-v1.ckpt`` beside it).

    On several processes SIGTERM only sets a flag here (Lightning's own handler broadcasts
    from inside the signal handler, so two signals on one rank and one on another, as a
    launcher forwarding the signal gives, leave the ranks in different collectives: a
    hang). After every step the ranks agree on it in one all-reduce, so a signal to any
    of them stops all at the same step, each taking part in the checkpoint."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)
        self._requested = False
        self._before_fit = None
        self._flag_tensor = None    # the stop flag the ranks all-reduce (DDP)

    @property
    def last_path(self) -> Path:
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def _save_last(self, trainer) -> None:
        # recorded as Lightning's own last checkpoint, which it then replaces in place
        self.last_model_path = str(self.last_path)
        trainer.save_checkpoint(self.last_model_path)

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)
        self._before_fit = signal.getsignal(signal.SIGTERM)   # before Lightning's handler

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self._requested = False
        if trainer.world_size > 1:                  # Lightning restores its original at the end
            self._flag_tensor = torch.zeros(1, device=pl_module.device)
            signal.signal(signal.SIGTERM, self._flag)

    def _flag(self, signum, frame):
        self._requested = True
        if callable(self._before_fit):
            self._before_fit(signum, frame)

    def on_train_end(self, trainer, pl_module):
        super().on_train_end(trainer, pl_module)
        if self.save_last and self.dirpath:
            self._save_last(trainer)

    _stopped_at = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # A stop was requested during this step: save now, in the state a resumed run
        # continues exactly (Lightning raises only after its end-of-epoch bookkeeping).
        if trainer.world_size > 1:
            # one host sync per step, as Lightning's own SIGTERM broadcast has
            self._flag_tensor.fill_(float(self._requested))
            if trainer.strategy.reduce(self._flag_tensor, reduce_op="sum").item() == 0:
                return
            if self.dirpath:
                self._save_last(trainer)
                self._stopped_at = trainer.global_step
            raise SIGTERMException()
        if trainer.received_sigterm and self.dirpath:
            self._save_last(trainer)
            self._stopped_at = trainer.global_step

    def on_exception(self, trainer, pl_module, exception):
        if (isinstance(exception, SIGTERMException) and self.dirpath
                and self._stopped_at != trainer.global_step):
            for cb in trainer.callbacks:          # stopped during validation: raw weights back
                if isinstance(cb, EMA):
                    cb.restore_raw(pl_module)
            self._save_last(trainer)


def _rng_state() -> dict:
    import random

    import numpy as np
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # plain types and tensors only: checkpoints are read with weights_only=True
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                       int(has_gauss), float(cached))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomStates(L.Callback):
    """The random streams of every process (torch, CUDA, numpy, Python: training noise,
    times, label dropout, latent draws) in each checkpoint, and set again right before the
    first training step of a resumed run, so that it draws what the uninterrupted run drew.
    (Data order is the ``ResumableLoader``'s.) Under DDP the states of all processes are
    gathered into the checkpoint; each takes its own back."""

    def __init__(self):
        self._trainer = None
        self._pending = None

    def setup(self, trainer, pl_module, stage):
        self._trainer = trainer

    def state_dict(self) -> dict:
        state = _rng_state()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            import torch.distributed as dist
            states = [None] * trainer.world_size
            dist.all_gather_object(states, state)
            return {"per_rank": states}
        return {"per_rank": [state]}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("per_rank")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._pending:
            states = self._pending
            if len(states) == trainer.world_size:      # same number of processes
                _set_rng_state(states[trainer.global_rank])
            self._pending = None


def log_image(loggers, key: str, path: Path, step: int) -> None:
    """The image file at ``path`` as panel ``key`` on every logger that shows images: W&B
    (``log_image``) and TensorBoard (``add_image``); CSV has none."""
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key, [str(path)], step=step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):
            from torchvision.io import ImageReadMode, read_image
            logger.experiment.add_image(key, read_image(str(path), ImageReadMode.RGB), step)


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` training steps, draw ``num_samples`` with the module's
    configured sampler from the EMA weights and save ``samples/step_<step>.png``; logs the
    grid to loggers that take images (W&B, TensorBoard).

    Put it before ``EMA`` in the callback list: it runs at the end of validation, while the
    EMA weights are still swapped in.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 0, num_samples: int = 64,
                 seed: int = 0, inverse_scaler=None, is_image: bool = True):
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.seed = seed
        self.inverse_scaler = inverse_scaler
        self.is_image = is_image
        self._last = -1

    def on_validation_epoch_end(self, trainer, pl_module):
        step = trainer.global_step
        if (self.every_n_steps <= 0 or trainer.sanity_checking or step == self._last
                or step % self.every_n_steps or not trainer.is_global_zero):
            return
        self._last = step
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        x = pl_module.sample(self.num_samples, generator=gen).x
        if self.inverse_scaler is not None:
            x = self.inverse_scaler(x)
        path = save_samples(x.cpu(), self.dirpath / f"step_{step:06d}.png", self.is_image)
        log_image(trainer.loggers, "samples", path, step)


class _MetricCallback(L.Callback):
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
    request (``scorelab.interrupt``): renamed ``partial_<name>`` so that no table or sweeper
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


class FIDCallback(_MetricCallback):
    """FID (and IS, class accuracy) of ``num_samples`` samples from the module's sampler
    (or ``sampler``) against the dataset's reference statistics.

    Args:
        every_n_steps / at_end / seed: when to run (see ``_MetricCallback``).
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


class BitsPerDimCallback(_MetricCallback):
    """Bits/dim (images) or NLL in nats/dim (vectors) of the first ``num_examples``
    held-out examples through the probability-flow ODE, with the EMA weights; for a latent
    model ``latent_bpd``, bits per dimension of the autoencoder's latent.

    Args:
        every_n_steps / at_end / seed: when to run (see ``_MetricCallback``).
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
                model.sde, x, y, self.chunk, self.seed, pixels,
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
