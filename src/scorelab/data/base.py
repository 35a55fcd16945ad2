"""DataModule base: a train/val split of a map-style dataset yielding (x, y)."""

from __future__ import annotations

import abc
import itertools

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset, random_split

from scorelab.util.checks import boolean, check_values, integer, number
from scorelab.util.errors import ScorelabError

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
    space ([-1, 1] for images), without random augmentation: that is ``augment``
    (``(x, generator) -> x``, e.g. ``horizontal_flip``), applied to training examples only,
    each drawn from its own seeded generator (``Augmented``).
    """

    shape: tuple = ()
    num_classes: int = 0
    is_image: bool = True
    name: str = ""
    augment = None
    # a captioned dataset's prompt sets for evaluation (``prompts(n, split, seed)``)
    prompt_splits: tuple = ()

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
        if self.augment is not None:
            self.train_set = Augmented(self.train_set, self.augment)

    def _loader(self, ds, shuffle: bool, drop_last: bool, owner=None) -> DataLoader:
        """``owner``: the DataModule the trainer is attached to (default: this one)."""
        owner = owner or self
        # Shuffled by (seed, epoch), the seed drawn from the run's seed; and a generator of
        # its own, so that creating an iterator never draws from the global stream the
        # training noise comes from.
        seed = int(torch.randint(2 ** 62, (1,)))
        return ResumableLoader(ds, batch_size=self.batch_size,
                               sampler=EpochShuffle(ds, seed) if shuffle else None,
                               drop_last=drop_last, num_workers=self.num_workers,
                               pin_memory=self.pin_memory and torch.cuda.is_available(),
                               persistent_workers=self.num_workers > 0,
                               generator=torch.Generator().manual_seed(seed), seed=seed,
                               progress=lambda: batches_done(owner.trainer))

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False, drop_last=False)

    def inverse_scaler(self, x: torch.Tensor) -> torch.Tensor:
        return inverse_scaler(x, self.is_image)


def batches_done(trainer) -> int:
    """Training batches of the current epoch that have been trained on (0 without one)."""
    if trainer is None:
        return 0
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


class _Batches:
    """The loader's batches of indices (its ``_index_sampler``): each iteration starts
    after the loader's ``_active_skip`` batches of the epoch (of indices: no data is loaded
    for them), and for an ``Augmented`` dataset each index comes with its example's key
    ``(seed, epoch, index)``. One object for the loader's life, read afresh at each
    iteration: a DataLoader with persistent workers keeps the ``_index_sampler`` of its
    first iteration for every later epoch."""

    def __init__(self, loader, batch_sampler):
        self.loader, self.batch_sampler = loader, batch_sampler

    def __iter__(self):
        loader = self.loader
        batches = itertools.islice(iter(self.batch_sampler), loader._active_skip, None)
        if not isinstance(loader.dataset, Augmented):
            return batches
        seed, epoch = loader.seed, int(getattr(loader.sampler, "epoch", 0))
        return ([(i, (seed, epoch, i)) for i in batch] for batch in batches)

    def __len__(self):
        return len(self.batch_sampler)


class EpochShuffle(RandomSampler):
    """A permutation of the dataset for each epoch, drawn from (seed, epoch) — the rule of
    DistributedSampler, which Lightning puts in its place under DDP — so that any epoch's
    order can be drawn again after a restart (``set_epoch``)."""

    def __init__(self, data_source, seed: int):
        super().__init__(data_source)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=g).tolist())


class ResumableLoader(DataLoader):
    """A DataLoader that a checkpoint can resume mid-epoch (Lightning's stateful-loader
    protocol: it stores ``state_dict()`` in checkpoints and calls ``load_state_dict`` before
    iterating again): the state is the epoch and how many of its batches were trained on
    (``progress()``); the resumed iteration draws that epoch's order and starts after them.

    Random augmentation (``Augmented``) draws from a generator seeded by (``seed``, epoch,
    example), not from a worker's or the main process's random stream: an example's draw is
    the same whichever process or worker loads it and whenever, so a resumed run, with
    DataLoader workers or without, sees what the uninterrupted run saw.

    Args:
        progress: ``() -> int``, batches of the current epoch already trained on.
        seed: the seed of the examples' augmentation.
        *args, **kwargs: DataLoader's.
    """

    def __init__(self, *args, progress=None, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress, self.seed = progress, int(seed)
        self._skip, self._active_skip = 0, 0
        self._batches = None

    def __iter__(self):
        self._active_skip, self._skip = self._skip, 0
        try:
            return super().__iter__()
        finally:
            self._active_skip = 0

    @property
    def _index_sampler(self):
        if self._batches is None:
            self._batches = _Batches(self, super()._index_sampler)
        return self._batches

    def state_dict(self) -> dict:
        return {"batches": int(self.progress()) if self.progress else 0,
                "epoch": int(getattr(self.sampler, "epoch", 0))}

    def load_state_dict(self, state: dict) -> None:
        epoch, self._skip = int(state.get("epoch", 0)), int(state.get("batches", 0))
        if self._skip >= len(self):               # saved after the epoch's last batch
            epoch, self._skip = epoch + 1, 0
        # (Lightning sets the epoch only after its first iterator of a resumed run)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class Augmented(Dataset):
    """A dataset of (x, y) whose x is randomly augmented: ``augment(x, generator)``, the
    generator seeded by the example's key (seed, epoch, index), which ``ResumableLoader``
    passes with each index. Plain indices give the examples unaugmented."""

    def __init__(self, dataset: Dataset, augment):
        self.dataset, self.augment = dataset, augment

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            return self.dataset[index]
        index, key = index
        x, y = self.dataset[index]
        return self.augment(x, key_generator(*key)), y


def key_generator(*key: int) -> torch.Generator:
    """A torch generator seeded by a key of integers (seed, epoch, index), mixed by numpy's
    SeedSequence so that neighbouring keys give unrelated streams."""
    import numpy as np
    state = np.random.SeedSequence([int(k) % 2 ** 63 for k in key]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]) >> 1)


def horizontal_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x mirrored left-right (last axis) with probability 1/2."""
    return x.flip(-1) if torch.rand((), generator=generator) < 0.5 else x


def inverse_scaler(x: torch.Tensor, is_image: bool) -> torch.Tensor:
    """Model space -> data space: [-1, 1] -> [0, 1] for images, identity otherwise."""
    return ((x + 1) / 2).clamp(0, 1) if is_image else x


def to_unit_range(x: torch.Tensor, max_value: float) -> torch.Tensor:
    """Scale values in [0, max_value] to [-1, 1]."""
    return x.float() / max_value * 2 - 1


def tensor_dataset(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
    return TensorDataset(x.contiguous(), y.long())
