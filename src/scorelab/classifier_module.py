"""ClassifierModule: the LightningModule that trains a ``NoisyClassifier`` for classifier
guidance (``python train.py experiment=mnist5k_classifier``)."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch

from scorelab.checks import check_value
from scorelab.classifier import NoisyClassifier
from scorelab.errors import NonFiniteLossError
from scorelab.module import LR_DECAY_RULE, with_lr_schedule


class ClassifierModule(L.LightningModule):
    """Args:
        model: the noisy classifier.
        optimizer: ``params -> torch.optim.Optimizer`` (a Hydra ``_partial_``).
        data_shape, num_classes, is_image: the dataset's.
        warmup_steps, lr_decay: the learning-rate schedule (as ``DiffusionModule``'s).
        config: the composed run config, stored in every checkpoint.
    """

    def __init__(self, model: NoisyClassifier, optimizer: Callable[..., torch.optim.Optimizer],
                 data_shape, num_classes: int, is_image: bool = True, warmup_steps: int = 0,
                 lr_decay: str = "none", config: dict | None = None):
        super().__init__()
        check_value("optim.lr_decay", lr_decay, LR_DECAY_RULE)
        self.model, self.optimizer_factory = model, optimizer
        self.data_shape, self.num_classes = tuple(data_shape), int(num_classes)
        self.is_image, self.warmup_steps, self.lr_decay = is_image, int(warmup_steps), lr_decay
        self.config = config or {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, acc = self.model.loss(x, y)
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLossError(f"classifier loss is {loss.item()} at step "
                                     f"{self.global_step}; lower optim.lr")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/acc", acc, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        gen = torch.Generator(device=x.device).manual_seed(10_000 + batch_idx)
        loss, acc = self.model.loss(x, y, generator=gen)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        self.log("val/acc", acc, prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        opt = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        return with_lr_schedule(self, opt, self.warmup_steps, self.lr_decay)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["scorelab"] = {"config": self.config, "data_shape": list(self.data_shape),
                                  "num_classes": self.num_classes, "is_image": self.is_image,
                                  "kind": "classifier"}
