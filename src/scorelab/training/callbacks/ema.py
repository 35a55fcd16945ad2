"""EMA of the weights on Lightning's ``WeightAveraging``."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging


def ema_with_warmup(decay: float, warmup: bool):
    """EMA update avg <- avg + (1 - d)(p - avg) with d = min(decay, (1 + n) / (10 + n)) when
    ``warmup`` (n = updates so far), so short runs are not dominated by the random init."""
    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor):
        if not averaged.is_floating_point():      # integer buffers (e.g. position ids)
            return current.clone()
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
