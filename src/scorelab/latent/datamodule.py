"""A pixel DataModule seen through a frozen autoencoder: batches of (posterior, y), the
posterior [B, 2, c, h, w] being the encoder's mean and log-variance (``latent.py``). The
diffusion module draws z ~ q(z|x) from it afresh at every use and normalises it.

``encode="cache"`` encodes both splits once, at ``setup``; ``"on_the_fly"`` keeps the images
and encodes each batch on its device after the transfer (for data too large to cache). Either
way the latent shift and scale are estimated at ``setup`` over the whole training split, in
a fixed order, with the same result on every process."""

from __future__ import annotations

import os

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, TensorDataset

from scorelab.data.base import DiffusionDataModule
from scorelab.latent.space import LatentSpace, PosteriorMoments
from scorelab.util.progress import WorkProgress

ENCODINGS = ("cache", "on_the_fly")


def _encoding_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@torch.no_grad()
def encode_split(latent: LatentSpace, ds: Dataset, batch_size: int, moments=None,
                 keep: bool = True, desc: str | None = None) -> TensorDataset | None:
    """Posteriors of a split in dataset order ([N, 2, c, h, w] on the CPU, with the labels)
    when ``keep``; adds every batch to ``moments`` when given. ``desc``: show a progress
    bar of the images encoded (on the first process)."""
    device = _encoding_device()
    home = latent.scale.device
    latent.to(device)
    posteriors, labels = [], []
    bar = WorkProgress(len(ds), desc, enabled=rank_zero_only.rank == 0) if desc else None
    try:
        for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
            p = latent.posterior(x.to(device))
            if moments is not None:
                moments.update(p)
            if keep:
                posteriors.append(p.cpu())
                labels.append(torch.as_tensor(y))
            if bar is not None:
                bar.update(len(x))
    finally:
        latent.to(home)
        if bar is not None:
            bar.close()
    return TensorDataset(torch.cat(posteriors), torch.cat(labels).long()) if keep else None


# what a latent DataModule reads from its pixel DataModule (captions and their prompts)
PIXEL_ATTRIBUTES = frozenset({"tokenizer", "captions", "prompt_splits", "prompts",
                              "named_digits", "single_digits", "reference_name"})


class LatentDataModule(L.LightningDataModule):
    """Args:
        pixels: the image DataModule (its split, loaders, name and reference data are kept:
            FID statistics stay those of the pixel dataset).
        latent: the ``LatentSpace`` shared with the diffusion module.
        encode: "cache" or "on_the_fly".
        batch_size: images per encoder pass when caching and estimating.
        estimate: estimate the latent's shift and scale at ``setup`` (training); False when
            they come from a checkpoint (evaluation).
    """

    def __init__(self, pixels: DiffusionDataModule, latent: LatentSpace, encode: str = "cache",
                 batch_size: int = 256, estimate: bool = True):
        super().__init__()
        if encode not in ENCODINGS:
            raise ValueError(f"autoencoder.encode: must be one of {', '.join(ENCODINGS)}, "
                             f"got {encode!r}")
        if tuple(pixels.shape) != tuple(latent.data_shape):
            raise ValueError(f"the autoencoder takes images {list(latent.data_shape)} but "
                             f"data={pixels.name} has {list(pixels.shape)}")
        self.pixels, self.latent, self.encode = pixels, latent, encode
        self.encode_batch_size, self.estimate = int(batch_size), estimate
        self.shape, self.latent_shape = tuple(pixels.shape), tuple(latent.latent_shape)
        self.num_classes, self.is_image, self.name = pixels.num_classes, True, pixels.name
        self.root = getattr(pixels, "root", None)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def __getattr__(self, name: str):
        # a captioned dataset's tokenizer, prompts and references are the pixel dataset's
        if name in PIXEL_ATTRIBUTES:
            return getattr(self.pixels, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def load(self) -> Dataset:
        """The pixel dataset (reference statistics for FID are computed from it)."""
        return self.pixels.load()

    def inverse_scaler(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixels.inverse_scaler(x)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self._encode(stage)
        trainer = self.trainer
        if self.estimate and trainer is not None and trainer.world_size > 1:
            # Every process takes rank 0's shift and scale before any callback copies the
            # module (EMA): their estimate is deterministic; this makes agreement certain.
            for buf in (self.latent.shift, self.latent.scale):
                buf.copy_(trainer.strategy.broadcast(buf.clone(), src=0))

    def _encode(self, stage: str | None) -> None:
        self.pixels.setup(stage)
        cache = self.encode == "cache"
        moments = PosteriorMoments(self.latent.sample_posterior) \
            if self.estimate and self.latent.estimated else None
        train = self.pixels.train_set
        if cache or moments is not None:
            encoded = encode_split(self.latent, train, self.encode_batch_size, moments, cache,
                                   "encoding training images")
            train = encoded if cache else train
        if moments is not None:
            self.latent.set_statistics(moments)
        self.val_set = encode_split(self.latent, self.pixels.val_set, self.encode_batch_size,
                                    desc="encoding validation images") \
            if cache else self.pixels.val_set
        self.train_set = train

    def train_dataloader(self):
        return self.pixels._loader(self.train_set, shuffle=True, drop_last=True, owner=self)

    def val_dataloader(self):
        return self.pixels._loader(self.val_set, shuffle=False, drop_last=False, owner=self)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the fly: the images of a batch become posteriors on their device."""
        if self.encode == "cache":
            return batch
        x, y = batch
        return self.latent.posterior(x), y

    def posteriors(self, ds: Dataset, indices) -> torch.Tensor:
        """Stacked posteriors of examples of a split (encoding them on the fly)."""
        x = torch.stack([ds[i][0] for i in indices])
        if self.encode == "cache":
            return x
        return encode_split(self.latent, TensorDataset(x, torch.zeros(len(x))),
                            self.encode_batch_size).tensors[0]
