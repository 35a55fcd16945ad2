"""``last.ckpt`` at the end of training and on pre-emption (SIGTERM), on every process."""

from __future__ import annotations

import signal
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from scorelab.training.callbacks.ema import EMA


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
        # the whole training state (weights_only=False): what resume needs; saying so also
        # keeps Lightning from logging that it defaulted to it
        trainer.save_checkpoint(self.last_model_path, weights_only=self.save_weights_only)

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

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if "fit_loop" in checkpoint.get("loops", {}) and resumable_loop_state(
                checkpoint["loops"]["fit_loop"]):
            checkpoint["epoch"] = checkpoint["loops"]["fit_loop"]["epoch_progress"][
                "current"]["completed"]

    def on_exception(self, trainer, pl_module, exception):
        if (isinstance(exception, SIGTERMException) and self.dirpath
                and self._stopped_at != trainer.global_step):
            for cb in trainer.callbacks:          # stopped during validation: raw weights back
                if isinstance(cb, EMA):
                    cb.restore_raw(pl_module)
            self._save_last(trainer)


def resumable_loop_state(fit_loop: dict) -> bool:
    """Rewrite the state of a fit loop that stopped training (``max_steps`` reached, or
    ``trainer.should_stop``) so that a run resumed from it goes on where it stopped; True
    if it did.

    Lightning closes the epoch in progress when training stops, but restores such a state
    as if it had stopped elsewhere: an epoch stopped before its end counts as finished, so
    the resumed run (``resume=true trainer.max_steps=<more>``) starts the next epoch and
    skips the rest of this one; an epoch stopped at its end leaves its batch count in
    place, so the resumed run's next epoch ends one batch after it begins. Rewritten as
    Lightning's own checkpoints say it (one saved after a mid-epoch batch; a new epoch
    with no batch done), the resumed run draws the batches that follow
    (``ResumableLoader``) and ends exactly as a run that went to the new ``max_steps`` at
    once."""
    epochs, batches = fit_loop["epoch_progress"], fit_loop["epoch_loop.batch_progress"]
    if (epochs["current"]["processed"] != epochs["current"]["ready"]      # epoch not closed
            or batches["current"]["completed"] == 0):                       # or no batch in it
        return False
    if batches["is_last_batch"]:
        # closed at its end: the next epoch starts with none of its batches done
        batches["current"] = {k: 0 for k in batches["current"]}
        batches["is_last_batch"] = False
        for counts in (epochs["current"], epochs["total"]):
            counts["completed"] = counts["processed"]    # (a save from on_train_epoch_end)
        return True
    for counts in (epochs["current"], epochs["total"]):
        # reopened: this epoch is in progress, as in a save from on_train_batch_end
        counts["processed"] = counts["completed"] = counts["ready"] - 1
    if batches["current"]["completed"] == batches["current"]["processed"]:
        # (in on_train_batch_end the last batch is processed, not yet completed, and not
        # yet counted as stepped: a restart from there counts it)
        batches["current"]["completed"] -= 1
        batches["total"]["completed"] -= 1
        fit_loop["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
    return True
