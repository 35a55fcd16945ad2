"""Stop a diverging run: a training loss that grew far beyond its first value."""

from __future__ import annotations

import lightning as L
import torch

from scorelab.util.checks import check_value, number, optional
from scorelab.util.errors import DivergedError

# Allowed values of the factor (train.py's ``divergence_factor``): above 1, or None (off).
FACTOR_RULE = optional(number(1, lo_open=True))


class DivergenceGuard(L.Callback):
    """Stops training with ``DivergedError`` when the training loss exceeds ``factor`` times
    its value at the first step (the untrained model's loss, kept in the checkpoint so
    that a resumed run compares with the same value): |loss_n| > factor |loss_0|.

    A learning rate far too high drives the loss to 1e27 and beyond while it stays finite,
    so the NaN guard (``NonFiniteLossError``) never fires and the run goes on for its
    whole length. Normal training stays below its first loss; spikes of 10-100x happen,
    hence a large default. Non-finite losses are the NaN guard's.

    The check is on the device; its result is read every step on the CPU, every
    ``CHECK_EVERY`` steps on an accelerator (a host sync), and always before a checkpoint
    is written, so that no checkpoint of a diverged model replaces an earlier one. Under
    DDP the ranks agree (one all-reduce at each read): all stop together.

    Args:
        factor: the multiple of the first loss that stops the run; None: no check.
    """

    CHECK_EVERY = 20

    def __init__(self, factor: float | None = 1.0e4):
        check_value("divergence_factor", factor, FACTOR_RULE)
        self.factor = None if factor is None else float(factor)
        self._reference = None      # |loss| of the first step (a tensor until saved)
        self._worst = None          # largest finite |loss| since the last read, on the device
        self._worst_step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self.factor is None or not isinstance(loss, torch.Tensor):
            return
        size = torch.where(torch.isfinite(loss), loss.detach().abs(), 0.0).float()
        if self._reference is None:
            self._reference = size
        self._worst = size if self._worst is None else torch.maximum(self._worst, size)
        every = 1 if size.device.type == "cpu" else self.CHECK_EVERY
        if trainer.global_step % every == 0:
            self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.check(trainer)

    def check(self, trainer) -> None:
        """Raise ``DivergedError`` if the loss since the last check exceeded the limit."""
        if self.factor is None or self._worst is None:
            return
        reference = torch.as_tensor(self._reference, device=self._worst.device)
        bad = ((reference > 0) & (self._worst > self.factor * reference)).float()
        if trainer.world_size > 1:      # every rank reads at the same steps
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        if bad.item() == 0:
            self._worst = None
            return
        worst, first = float(self._worst), float(reference)
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups][:1]
        base = [g.get("initial_lr", g["lr"]) for opt in trainer.optimizers
                for g in opt.param_groups][:1]
        lr = f"learning rate {lrs[0]:.3g} (optim.optimizer.lr={base[0]:g})" if lrs else \
            "learning rate unknown"
        # (under DDP the numbers are this rank's; another rank's loss may be the one over)
        raise DivergedError(
            f"training diverged by step {trainer.global_step}: the loss reached {worst:.3g}, "
            f"over {self.factor:g} x its first value {first:.3g}, at {lr}; lower "
            f"optim.optimizer.lr or raise optim.warmup_steps (divergence_factor=null: no check)")

    def state_dict(self) -> dict:
        return {"reference": None if self._reference is None else float(self._reference)}

    def load_state_dict(self, state_dict: dict) -> None:
        reference = state_dict.get("reference")
        self._reference = None if reference is None else torch.tensor(float(reference))
