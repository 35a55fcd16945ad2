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
from scorelab.util.progress import WorkProgress
from scorelab.likelihood.pf_ode import bits_per_dim, log_likelihood
from scorelab.metrics.features import feature_spec
from scorelab.metrics.fid import feature_statistics, load_statistics, save_statistics


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
                    progress: Callable | None = None, conditions: Callable | None = None
                    ) -> tuple[dict[str, Tensor], int]:
    """Draw this process's share of n samples and extract their features.
    ``sample_fn(m, y, generator) -> (x in [-1, 1], nfe)``; ``extractor(x) -> (features,
    logits)`` in float64 with attributes ``dim`` and ``num_logits``, or a dict of such
    extractors: each chunk is drawn once and featurised by every one (rows
    ``features/<key>``, ``logits/<key>`` instead of ``features``, ``logits``). A conditional
    model (``num_classes`` > 0) gets label i % num_classes for sample i (row ``labels``);
    ``conditions(index) -> (y, rows)`` gives any other condition (a caption model's token
    ids, with rows such as the digits the captions name), called with an empty index too.
    ``progress(m, nfe)`` is called after every chunk of m samples (e.g. ``WorkProgress``).
    A stop request (``scorelab.util.interrupt``) ends the loop after the chunk in progress; the
    finished chunks are returned (fewer rows than the share).
    Returns ({"index", features and logits, condition rows} on ``device``, NFE per
    sample)."""
    several = isinstance(extractor, dict)
    extractors = extractor if several else {"": extractor}
    suffix = {key: f"/{key}" if several else "" for key in extractors}
    rows = {"index": []}
    for key in extractors:
        rows[f"features{suffix[key]}"], rows[f"logits{suffix[key]}"] = [], []
    if conditions is None:
        def conditions(index):
            y = index % num_classes if num_classes > 0 else None
            return y, ({"labels": y} if y is not None else {})
    _, extra = conditions(torch.zeros(0, dtype=torch.long, device=device))
    empty_rows = {k: v.to(device) for k, v in extra.items()}
    rows.update({k: [] for k in extra})
    nfe = 0
    for k, start, size in my_chunks(n, chunk, rank, world):
        if requested():                 # pre-empted: keep the finished chunks
            break
        index = torch.arange(start, start + size, device=device)
        y, extra = conditions(index)
        x, nfe = sample_fn(size, y, chunk_generator(seed, k, device))
        for key, ex in extractors.items():
            feats, logits = ex(x)
            rows[f"features{suffix[key]}"].append(feats.to(device))
            rows[f"logits{suffix[key]}"].append(logits.to(device))
        rows["index"].append(index)
        for key, value in extra.items():
            rows[key].append(value.to(device))
        if progress is not None:
            progress(size, nfe)
    # A process without chunks (n < chunk * world) still sends rows of the right width,
    # so that every process makes the same all_gather calls.
    empty = {"index": torch.zeros(0, dtype=torch.long, device=device), **empty_rows}
    for key, ex in extractors.items():
        empty[f"features{suffix[key]}"] = torch.zeros(0, ex.dim, dtype=torch.float64,
                                                      device=device)
        empty[f"logits{suffix[key]}"] = torch.zeros(0, ex.num_logits, dtype=torch.float64,
                                                    device=device)
    return {k: torch.cat(v) if v else empty[k] for k, v in rows.items()}, nfe


def sample_metrics(union: dict[str, Tensor], reference: dict | None, splits: int = 10) -> dict:
    """FID against ``reference`` statistics, IS, and class accuracy when labels exist: the
    registry's metrics on the rows of one extractor (``features``, ``logits``)."""
    from scorelab.metrics.sample_quality import FID, ClassAccuracy, InceptionScore
    out = FID().compute(union, reference) if reference is not None else {}
    out.update(InceptionScore(splits).compute(union, None))
    if "labels" in union:
        out["class_accuracy"] = ClassAccuracy().compute(union, None)["class_accuracy"]
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


def resolve_features(features: str, dataset_name: str) -> str:
    """The extractor name of ``features`` for image data (``feature_spec``'s rule)."""
    return feature_spec(features, dataset_name)["name"]


def reference_cache_path(cache_dir, dataset_name: str, features: str, root=None):
    """``<data.root or ~/.cache/scorelab>/fid_stats_<dataset>_<features tag>.npz`` (the tag
    names the extractor's weights, so new weights never meet old statistics)."""
    base = Path(cache_dir) if cache_dir else (Path(root) if root else
                                              Path.home() / ".cache" / "scorelab")
    return base / f"fid_stats_{dataset_name}_{features}.npz"


@torch.no_grad()
def dataset_features(dataset, extractor, batch: int = 500) -> tuple[Tensor, Tensor]:
    """Features and labels of every example of a map-style dataset of (x, y), with a
    progress bar (reference statistics of a large dataset take minutes)."""
    feats, labels = [], []
    bar = WorkProgress(len(dataset), "reference features")
    for start in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch))]
        feats.append(extractor(torch.stack([x for x, _ in items]))[0])
        # (a captioned dataset's y is a row of token ids)
        labels.append(torch.stack([torch.as_tensor(y).long() for _, y in items]))
        bar.update(len(items))
    bar.close()
    return torch.cat(feats), torch.cat(labels)


def dataset_statistics(dataset, extractor, batch: int = 500) -> tuple[dict, int]:
    """FID statistics of every image of a map-style dataset of (x in [-1, 1], y), with the
    features and labels themselves (KID, PRDC and per-class FID need them)."""
    feats, labels = dataset_features(dataset, extractor, batch)
    return {**feature_statistics(feats), "features": feats, "labels": labels}, len(dataset)


def reference_statistics(dataset, dataset_name: str, extractor, reference=None,
                         cache_dir=None, root=None, keep_features: bool = False
                         ) -> tuple[dict, str]:
    """The dataset's reference: FID statistics {"mu", "sigma"} and, with ``keep_features``,
    the real features and labels {"features", "labels"}. From a given ``reference`` file,
    else the cached file (recomputed if it lacks the features asked for), else computed
    from the whole dataset and cached (never for an extractor without a ``tag``). Returns
    (reference, file)."""
    if reference:
        stats = load_statistics(reference, extractor.name)
        if keep_features and "features" not in stats:
            raise ValueError(f"reference={reference} holds only mu and sigma; KID / PRDC / "
                             f"per-class FID need the real features (reference=null computes "
                             f"and caches them)")
        return stats, str(reference)
    tag = getattr(extractor, "tag", extractor.name)
    if tag is None:
        return dataset_statistics(dataset, extractor)[0], "computed (not cached)"
    path = reference_cache_path(cache_dir, dataset_name, tag, root)
    if path.is_file():
        stats = load_statistics(path, extractor.name)
        if not keep_features or "features" in stats:
            return stats, str(path)
    stats, n = dataset_statistics(dataset, extractor)
    if not keep_features:       # (Inception features of a large dataset are big)
        stats = {k: stats[k] for k in ("mu", "sigma")}
    save_statistics(path, stats, extractor.name, n)
    return stats, str(path)
