"""Lightning callbacks: EMA of the weights, periodic sample grids."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging

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


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, plus ``last.ckpt`` written at the end of training even
    when the last periodic save fell on an earlier step (ModelCheckpoint skips it then), so
    the run's final weights are always on disk."""

    def on_train_end(self, trainer, pl_module):
        super().on_train_end(trainer, pl_module)
        if self.save_last and self.dirpath:
            final = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            trainer.save_checkpoint(str(final))


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` training steps, draw ``num_samples`` with the module's
    configured sampler from the EMA weights and save ``samples/step_<step>.png``; logs the
    grid to loggers that take images (W&B).

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
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image("samples", [str(path)], step=step)
