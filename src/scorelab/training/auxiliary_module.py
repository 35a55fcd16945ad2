"""LightningModules for the networks trained beside a diffusion model: the noisy classifier
of classifier guidance and the stage-1 autoencoder of latent diffusion. Each is its model's
``metrics(x, y, generator) -> {"loss", ...}``, logged as train/<name> and val/<name>, with the
diffusion module's learning-rate schedule and a checkpoint that says what it holds."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch

from scorelab.util.checks import check_value
from scorelab.util.errors import NonFiniteLossError
from scorelab.training.diffusion_module import LR_DECAY_RULE, with_lr_schedule


class AuxiliaryModule(L.LightningModule):
    """Args:
        model: an ``nn.Module`` with ``metrics(x, y, generator=None) -> dict``.
        optimizer: ``params -> torch.optim.Optimizer`` (a Hydra ``_partial_``).
        data_shape, num_classes, is_image: the dataset's.
        warmup_steps, lr_decay: the learning-rate schedule (as ``DiffusionModule``'s).
        config: the composed run config, stored in every checkpoint.
    """

    kind = ""

    def __init__(self, model, optimizer: Callable[..., torch.optim.Optimizer], data_shape,
                 num_classes: int = 0, is_image: bool = True, warmup_steps: int = 0,
                 lr_decay: str = "none", config: dict | None = None):
        super().__init__()
        check_value("optim.lr_decay", lr_decay, LR_DECAY_RULE)
        self.model, self.optimizer_factory = model, optimizer
        self.data_shape, self.num_classes = tuple(data_shape), int(num_classes)
        self.is_image, self.warmup_steps, self.lr_decay = is_image, int(warmup_steps), lr_decay
        self.config = config or {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        metrics = self.model.metrics(x, y)
        if not torch.isfinite(metrics["loss"].detach()):
            raise NonFiniteLossError(f"{self.kind} loss is {metrics['loss'].item()} at step "
                                     f"{self.global_step}; lower optim.lr")
        for name, value in metrics.items():
            self.log(f"train/{name}", value, prog_bar=name in ("loss", "acc", "psnr"),
                     on_step=True, on_epoch=True)
        return metrics["loss"]

    def validation_step(self, batch, batch_idx):
        x, y = batch
        # Same noise for every validation pass, so the curve compares like with like.
        gen = torch.Generator(device=x.device).manual_seed(10_000 + batch_idx)
        metrics = self.model.metrics(x, y, generator=gen)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name in ("loss", "acc", "psnr"),
                     sync_dist=True, batch_size=x.shape[0])
        return metrics["loss"]

    def configure_optimizers(self):
        opt = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        return with_lr_schedule(self, opt, self.warmup_steps, self.lr_decay)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["scorelab"] = {"config": self.config, "data_shape": list(self.data_shape),
                                  "num_classes": self.num_classes, "is_image": self.is_image,
                                  "kind": self.kind}


class ClassifierModule(AuxiliaryModule):
    """Trains a ``NoisyClassifier`` (``python train.py experiment=mnist5k_classifier``)."""

    kind = "classifier"


class AutoencoderModule(AuxiliaryModule):
    """Trains a ``KLAutoencoder`` (``python train.py experiment=mnist5k_autoencoder``); at
    every validation, rank 0 writes ``reconstructions/step_NNNNNN.png`` under the run
    directory: the first validation images over their reconstructions D(mean of E(x))."""

    kind = "autoencoder"
    GRID = 16

    def validation_step(self, batch, batch_idx):
        loss = super().validation_step(batch, batch_idx)
        if batch_idx == 0 and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            from pathlib import Path

            from torchvision.utils import save_image

            from scorelab.data.base import inverse_scaler
            x = batch[0][:self.GRID]
            grid = torch.cat([x, self.model.reconstruct(x)])     # originals over their rows
            path = Path(self.trainer.default_root_dir) / "reconstructions" \
                / f"step_{self.global_step:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(inverse_scaler(grid, True), path, nrow=x.shape[0], padding=2)
        return loss
