"""Reflow's data (Liu et al. 2023, "Flow Straight and Fast", Sec. 2.3): pairs (noise z,
teacher sample x = Phi(z)) of a trained model's ODE sampler, on which a new flow is
trained with the pair coupled (x_t = alpha x + sigma z, the same z): the k-rectified flow.

Pairs are drawn in chunks of ``chunk``, chunk k from its own seed (seed, k), so the same
directory results on any number of processes (process r draws the chunks k = r mod world)
and a run stopped half-way goes on from the chunks already on disk (each written to a
temporary file and renamed). ``pairs.json`` records the teacher and the sampler; a
directory made by another teacher or sampler is refused.

The validation split, the metrics' reference and everything else about the data are the
real dataset's (``base``): the student is judged against the data, not against the teacher.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from scorelab.data.base import DiffusionDataModule
from scorelab.util.errors import ConfigError

log = logging.getLogger("scorelab")


class PairsDataset(Dataset):
    """The (x, y, noise) triples of a pairs directory's chunk files."""

    def __init__(self, files: list[Path]):
        parts = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
        self.x = torch.cat([p["x"] for p in parts])
        self.y = torch.cat([p["y"] for p in parts])
        self.noise = torch.cat([p["noise"] for p in parts])

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i], self.y[i], self.noise[i]


def draw_pairs(teacher, sampler: dict, n: int, seed: int, device) -> dict:
    """n pairs of ``teacher`` (a DiffusionModule): unit noise z from (seed) and the
    sampler's sample from the prior draw sigma(T) z (the student's x_t = alpha x + sigma z
    takes z); class labels in turn for a class-conditional teacher (else 0)."""
    from scorelab.sampling import sample
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (n,) + tuple(teacher.data_shape)
    noise = torch.randn(shape, generator=gen, device=device)
    y = torch.arange(n, device=device) % teacher.num_classes if teacher.takes_labels else None
    settings = dict(sampler)
    name, steps = settings.pop("name"), settings.pop("steps")
    settings = teacher._with_analytic(name, steps, settings)
    x = sample(teacher.guided_prediction_fn(y), teacher.model.path, shape, name, steps,
               generator=gen, x_init=teacher.model.path.prior_std() * noise, **settings).x
    return {"x": x.cpu(), "y": (y if y is not None else torch.zeros(n, dtype=torch.long)).cpu(),
            "noise": noise.cpu()}


class ReflowDataModule(DiffusionDataModule):
    """Args:
        base: the real data's DataModule (validation, metrics, shape).
        teacher: the teacher checkpoint.
        sampler: the teacher's sampler settings {name, steps, **options}.
        num_pairs: pairs to draw (the training set).
        chunk: pairs per chunk file.
        directory: where the pairs live (made if absent).
        seed: the pairs' base seed.
        load_teacher: ``path -> DiffusionModule`` (the command line's checkpoint loader).
    """

    def __init__(self, base: DiffusionDataModule, teacher: str, sampler: dict, num_pairs: int,
                 chunk: int, directory: str, seed: int = 0, load_teacher=None):
        super().__init__(base.batch_size, base.val_fraction, base.num_workers,
                         base.pin_memory, base.seed)
        self.base = base
        self.shape, self.num_classes, self.is_image = base.shape, base.num_classes, base.is_image
        self.name = base.name
        self.reference_name = getattr(base, "reference_name", base.name)
        self.teacher_path, self.sampler = str(teacher), dict(sampler)
        self.num_pairs, self.chunk = int(num_pairs), int(chunk)
        self.directory, self.pairs_seed = Path(directory), int(seed)
        self.load_teacher = load_teacher

    def __getattr__(self, name):
        # what the real data module has and this one does not (mixture, augment, ...)
        if name == "base" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def load(self):
        return self.base.load()

    def manifest(self, teacher_step: int) -> dict:
        return {"teacher": str(Path(self.teacher_path).resolve()), "teacher_step": teacher_step,
                "sampler": self.sampler, "chunk": self.chunk, "seed": self.pairs_seed,
                "shape": list(self.shape)}

    def chunk_file(self, k: int) -> Path:
        return self.directory / f"pairs_{k:05d}.pt"

    def num_chunks(self) -> int:
        return -(-self.num_pairs // self.chunk)

    def check_directory(self, teacher_step: int) -> None:
        """A pairs directory made by another teacher or sampler is refused; a new one gets
        its ``pairs.json``."""
        want = self.manifest(teacher_step)
        record = self.directory / "pairs.json"
        if record.is_file():
            have = json.loads(record.read_text())
            diff = [k for k in want if have.get(k) != want[k]]
            if diff:
                raise ConfigError(
                    f"teacher.dir={self.directory} holds pairs of another "
                    f"{'/'.join(diff)} ({', '.join(f'{k}={have.get(k)}' for k in diff)}): "
                    f"give another teacher.dir")
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(want, indent=1) + "\n")
        os.replace(tmp, record)

    def generate(self, rank: int = 0, world: int = 1) -> None:
        """Draw this process's missing chunks (k = rank mod world)."""
        missing = [k for k in range(self.num_chunks())
                   if k % world == rank and not self.chunk_file(k).is_file()]
        if not missing:
            return
        teacher = self.load_teacher(self.teacher_path)
        device = torch.device("cuda", torch.cuda.current_device()) \
            if torch.cuda.is_available() else torch.device("cpu")
        teacher.to(device)
        start = time.perf_counter()
        for done, k in enumerate(missing, 1):
            n = min(self.chunk, self.num_pairs - k * self.chunk)
            pairs = draw_pairs(teacher, self.sampler, n, self.pairs_seed * 100_003 + k, device)
            tmp = self.chunk_file(k).with_suffix(".pt.tmp")
            torch.save(pairs, tmp)
            os.replace(tmp, self.chunk_file(k))
            log.info("reflow pairs: chunk %d of %d here (%d pairs, %.0f s)", done,
                     len(missing), n, time.perf_counter() - start)
        teacher.cpu()           # (the student trains on the device now)

    def setup(self, stage: str | None = None) -> None:
        """The real data's splits; at fit under a trainer (on every process, after DDP has
        started) the pairs, drawn where missing, as the training set. Before the trainer
        exists (the command line's set-up) the training set is the real one."""
        self.base.setup(stage)
        self.val_set = self.base.val_set
        trainer = self.trainer
        if stage not in (None, "fit") or trainer is None:
            if not isinstance(self.train_set, PairsDataset):
                self.train_set = self.base.train_set
            return
        if isinstance(self.train_set, PairsDataset):
            return
        self.generate(trainer.global_rank, trainer.world_size)
        trainer.strategy.barrier("reflow pairs")
        self.train_set = PairsDataset([self.chunk_file(k) for k in range(self.num_chunks())])
        if len(self.train_set) < self.batch_size:
            raise ConfigError(f"teacher.num_pairs={self.num_pairs} is fewer than "
                              f"data.batch_size={self.batch_size}")
