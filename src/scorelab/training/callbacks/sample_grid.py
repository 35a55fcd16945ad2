"""Sample grids during training, saved and shown on the loggers that take images."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from scorelab.util.visualize import save_samples


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
