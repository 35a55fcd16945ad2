"""Sharded, reproducible metric evaluation: the same numbers on 1 process and on many.

Work is cut into chunks of fixed size with a global index k, and chunk k always uses the
random generator seeded with (seed, k), whichever process runs it. Process r of w runs the
chunks k = r, r + w, ...; ``gather_union`` then collects every process's results, drops
the padding that ``all_gather`` needs, and orders them by global index. So the union is
exactly the single-process result (no duplicated or dropped samples for any n and w), and
statistics computed from it agree to float tolerance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from scorelab.util.interrupt import requested
from scorelab.likelihood.pf_ode import bits_per_dim, log_likelihood
from scorelab.metrics.fid import (class_accuracy, feature_statistics, frechet_distance,
                                  inception_score, load_statistics, save_statistics)


def my_chunks(n: int, chunk: int, rank: int = 0, world: int = 1) -> list[tuple[int, int, int]]:
    """(k, start, size) of the chunks of range(n) that process ``rank`` of ``world`` runs."""
    return [(k, k * chunk, min(chunk, n - k * chunk))
            for k in range(rank, math.ceil(n / chunk), world)]


def chunk_generator(seed: int, k: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + k)


def gather_union(local: dict[str, Tensor], all_gather: Callable | None) -> dict[str, Tensor]:
    """Concatenate every process's rows (dim 0) in order of ``local["index"]``.
    ``all_gather(t) -> [world, *t.shape]`` (e.g. ``LightningModule.all_gather``); None: one
    process."""
    if all_gather is not None:
        count = torch.tensor([local["index"].shape[0]], device=local["index"].device)
        counts = all_gather(count).reshape(-1).tolist()
        width = max(counts)
        gathered = {}
        for key, t in local.items():
            padded = torch.zeros((width,) + t.shape[1:], dtype=t.dtype, device=t.device)
            padded[:t.shape[0]] = t
            every = all_gather(padded)                                    # [world, width, ...]
            gathered[key] = torch.cat([every[r, :c] for r, c in enumerate(counts)])
        local = gathered
    order = torch.argsort(local["index"])
    return {k: v[order].cpu() for k, v in local.items()}


@torch.no_grad()
def sample_features(sample_fn: Callable, extractor, n: int, chunk: int, seed: int, device,
                    num_classes: int = 0, rank: int = 0, world: int = 1,
                    progress: Callable | None = None) -> tuple[dict[str, Tensor], int]:
    """Draw this process's share of n samples and extract their features.
    ``sample_fn(m, y, generator) -> (x in [-1, 1], nfe)``; ``extractor(x) -> (features,
    logits)`` in float64 with attributes ``dim`` and ``num_logits``; a conditional model
    (``num_classes`` > 0) gets label i % num_classes for sample i.
    ``progress(m, nfe)`` is called after every chunk of m samples (e.g. ``WorkProgress``).
    A stop request (``scorelab.util.interrupt``) ends the loop after the chunk in progress; the
    finished chunks are returned (fewer rows than the share).
    Returns ({"index", "features", "logits"[, "labels"]} on ``device``, NFE per sample)."""
    rows = {"index": [], "features": [], "logits": []}
    if num_classes > 0:
        rows["labels"] = []
    nfe = 0
    for k, start, size in my_chunks(n, chunk, rank, world):
        if requested():                 # pre-empted: keep the finished chunks
            break
        index = torch.arange(start, start + size, device=device)
        y = index % num_classes if num_classes > 0 else None
        x, nfe = sample_fn(size, y, chunk_generator(seed, k, device))
        feats, logits = extractor(x)
        rows["index"].append(index)
        rows["features"].append(feats.to(device))
        rows["logits"].append(logits.to(device))
        if y is not None:
            rows["labels"].append(y)
        if progress is not None:
            progress(size, nfe)
    # A process without chunks (n < chunk * world) still sends rows of the right width,
    # so that every process makes the same all_gather calls.
    empty = {"index": torch.zeros(0, dtype=torch.long, device=device),
             "labels": torch.zeros(0, dtype=torch.long, device=device),
             "features": torch.zeros(0, extractor.dim, dtype=torch.float64, device=device),
             "logits": torch.zeros(0, extractor.num_logits, dtype=torch.float64, device=device)}
    return {k: torch.cat(v) if v else empty[k] for k, v in rows.items()}, nfe


def sample_metrics(union: dict[str, Tensor], reference: dict | None, splits: int = 10) -> dict:
    """FID against ``reference`` statistics, IS, and class accuracy when labels exist."""
    out = {}
    if reference is not None:
        out["fid"] = frechet_distance(feature_statistics(union["features"]), reference)
    out["is"], out["is_std"] = inception_score(union["logits"], splits)
    if "labels" in union:
        out["class_accuracy"] = class_accuracy(union["logits"], union["labels"])
    return out


@torch.no_grad()
def heldout_bits_per_dim(model_for: Callable, path, x: Tensor, y: Tensor | None,
                         chunk: int, seed: int, is_image: bool, rank: int = 0, world: int = 1,
                         progress: Callable | None = None,
                         **likelihood_kwargs) -> tuple[dict[str, Tensor], int]:
    """This process's share of per-example bits/dim (images, 8-bit dequantised) or NLL in
    nats/dim (vectors) of held-out x ([-1, 1] for images). ``model_for(y)`` gives the
    model's prediction function (or a score function) for labels y (None: unconditional).
    ``progress(m, nfe)`` is called after every chunk of m examples. A stop request ends the
    loop after the chunk in progress, as in ``sample_features``.
    Returns ({"index", "value"}, NFE of the last chunk)."""
    index, values, nfe = [], [], 0
    for k, start, size in my_chunks(x.shape[0], chunk, rank, world):
        if requested():
            break
        xb = x[start:start + size]
        yb = y[start:start + size] if y is not None else None
        gen = chunk_generator(seed, k, x.device)
        if is_image:
            v, nfe = bits_per_dim(model_for(yb), path, (xb + 1) / 2, generator=gen,
                                  **likelihood_kwargs)
        else:
            res = log_likelihood(model_for(yb), path, xb, generator=gen, **likelihood_kwargs)
            v, nfe = -res.logp / xb[0].numel(), res.nfe
        index.append(torch.arange(start, start + size, device=x.device))
        values.append(v)
        if progress is not None:
            progress(size, nfe)
    empty = torch.zeros(0, device=x.device)
    return {"index": torch.cat(index) if index else empty.long(),
            "value": torch.cat(values) if values else empty}, nfe


DIGIT_DATASETS = ("mnist5k", "mnist", "digits")


def resolve_features(features: str, dataset_name: str) -> str:
    """"auto": the shipped digit classifier for the digit datasets, else Inception."""
    if features == "auto":
        return "digits" if dataset_name in DIGIT_DATASETS else "inception"
    return features


def reference_cache_path(cache_dir, dataset_name: str, features: str, root=None):
    """``<data.root or ~/.cache/scorelab>/fid_stats_<dataset>_<features tag>.npz`` (the tag
    names the extractor's weights, so new weights never meet old statistics)."""
    base = Path(cache_dir) if cache_dir else (Path(root) if root else
                                              Path.home() / ".cache" / "scorelab")
    return base / f"fid_stats_{dataset_name}_{features}.npz"


@torch.no_grad()
def dataset_statistics(dataset, extractor, batch: int = 500) -> tuple[dict, int]:
    """FID statistics of every image of a map-style dataset of (x in [-1, 1], y)."""
    feats = []
    for start in range(0, len(dataset), batch):
        x = torch.stack([dataset[i][0] for i in range(start, min(len(dataset), start + batch))])
        feats.append(extractor(x)[0])
    return feature_statistics(torch.cat(feats)), len(dataset)


def reference_statistics(dataset, dataset_name: str, extractor, reference=None,
                         cache_dir=None, root=None) -> tuple[dict, str]:
    """The dataset's FID statistics: a given ``reference`` file, else the cached file, else
    computed from the whole dataset and cached. Returns (statistics, file)."""
    if reference:
        return load_statistics(reference, extractor.name), str(reference)
    path = reference_cache_path(cache_dir, dataset_name, getattr(extractor, "tag",
                                                                 extractor.name), root)
    if path.is_file():
        return load_statistics(path, extractor.name), str(path)
    stats, n = dataset_statistics(dataset, extractor)
    save_statistics(path, stats, extractor.name, n)
    return stats, str(path)
