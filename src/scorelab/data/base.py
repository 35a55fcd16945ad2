"""DataModule base: a train/val split of a map-style dataset yielding (x, y)."""

from __future__ import annotations

import abc

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split

from scorelab.checks import boolean, check_values, integer, number
from scorelab.errors import ScorelabError

# Allowed values of the DataModule arguments (checked in the constructors, so that a bad
# value stops a run when the config is built).
RULES = {"batch_size": integer(1), "val_fraction": number(0, 1, lo_open=True, hi_open=True),
         "num_workers": integer(0), "pin_memory": boolean(), "seed": integer()}


class DataMissingError(ScorelabError, FileNotFoundError):
    """The data a config asks for is not on this machine."""


class DiffusionDataModule(L.LightningDataModule, abc.ABC):
    """Args:
        batch_size: per-process batch size.
        val_fraction: share of the data held out for validation (a seeded split).
        num_workers: DataLoader workers.
        pin_memory: pin host memory for faster transfer to the GPU.
        seed: seed of the train/val split.

    Subclasses set ``shape`` (one sample's shape), ``num_classes`` and ``is_image`` and
    implement ``load()`` returning the full dataset of (x, y) with x already in the model's
    space ([-1, 1] for images).
    """

    shape: tuple = ()
    num_classes: int = 0
    is_image: bool = True
    name: str = ""

    def __init__(self, batch_size: int = 128, val_fraction: float = 0.1, num_workers: int = 0,
                 pin_memory: bool = True, seed: int = 0):
        super().__init__()
        check_values("data", dict(batch_size=batch_size, val_fraction=val_fraction,
                                  num_workers=num_workers, pin_memory=pin_memory, seed=seed),
                     RULES)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @abc.abstractmethod
    def load(self) -> Dataset:
        """The full dataset of (x, y)."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = self.load()
        n_val = max(1, int(round(len(full) * self.val_fraction)))
        if len(full) - n_val < self.batch_size:
            raise ValueError(f"data={self.name}: {len(full) - n_val} training examples is fewer "
                             f"than data.batch_size={self.batch_size}")
        split = torch.Generator().manual_seed(self.seed)
        self.train_set, self.val_set = random_split(full, [len(full) - n_val, n_val],
                                                    generator=split)

    def _loader(self, ds, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers,
                          pin_memory=self.pin_memory and torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False, drop_last=False)

    def inverse_scaler(self, x: torch.Tensor) -> torch.Tensor:
        return inverse_scaler(x, self.is_image)


def inverse_scaler(x: torch.Tensor, is_image: bool) -> torch.Tensor:
    """Model space -> data space: [-1, 1] -> [0, 1] for images, identity otherwise."""
    return ((x + 1) / 2).clamp(0, 1) if is_image else x


def to_unit_range(x: torch.Tensor, max_value: float) -> torch.Tensor:
    """Scale values in [0, max_value] to [-1, 1]."""
    return x.float() / max_value * 2 - 1


def tensor_dataset(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
    return TensorDataset(x.contiguous(), y.long())
