"""FID, Inception Score and class accuracy from extracted features, through torch-fidelity.

    FID = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))         (Heusel et al. 2017)
    IS  = exp(E_x KL(p(y|x) || p(y)))                                 (Salimans et al. 2016)

The statistics (mean and covariance of the features) and both formulas are torch-fidelity's
own functions; this module adds caching of reference statistics as ``.npz`` files
(``mu``, ``sigma``, plus the extractor's name and the number of images) that are also
accepted as precomputed statistics (``metrics.fid.reference=PATH``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch import Tensor
from torch_fidelity.metric_fid import (KEY_METRIC_FID, fid_features_to_statistics,
                                       fid_statistics_to_metric)
from torch_fidelity.metric_isc import (KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD,
                                      isc_features_to_metric)


def feature_statistics(features: Tensor) -> dict:
    """{"mu": mean [D], "sigma": covariance [D, D]} in float64."""
    return fid_features_to_statistics(features.double().cpu())


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    s1 = {k: np.asarray(stats_1[k], dtype=np.float64) for k in ("mu", "sigma")}
    s2 = {k: np.asarray(stats_2[k], dtype=np.float64) for k in ("mu", "sigma")}
    if s1["mu"].shape != s2["mu"].shape:
        raise ValueError(f"FID statistics of different feature sizes: {s1['mu'].shape} vs "
                         f"{s2['mu'].shape} (were they made with the same extractor?)")
    return float(fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID])


def inception_score(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    """IS mean and std over ``splits`` splits after torch-fidelity's fixed-seed shuffle (so
    class-sorted inputs do not make single-class splits; the same samples in the same order
    give the same number on any number of processes)."""
    out = isc_features_to_metric(logits.double().cpu(), splits=splits, shuffle=True,
                                 rng_seed=2020)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


def class_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of samples whose predicted class is the label they were generated for."""
    return float((logits.argmax(1).cpu() == labels.cpu()).double().mean())


def save_statistics(path: str | Path, stats: dict, features: str, num_images: int) -> Path:
    """``stats`` {"mu", "sigma"} and, when present, the real features themselves
    ("features" [N, D], stored as float32, which the extractors compute in) and their class
    labels ("labels"), which KID, PRDC and per-class FID need."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")   # one per process (DDP)
    extra = {}
    if stats.get("features") is not None:
        extra["real_features"] = np.asarray(stats["features"], dtype=np.float32)
    if stats.get("labels") is not None:
        extra["real_labels"] = np.asarray(stats["labels"], dtype=np.int64)
    np.savez(tmp, mu=stats["mu"], sigma=stats["sigma"], features=features,
             num_images=num_images, **extra)
    tmp.replace(path)                      # never a half-written cache
    return path


def load_statistics(path: str | Path, features: str | None = None) -> dict:
    """Statistics from an ``.npz`` with ``mu`` and ``sigma`` (scorelab's or pytorch-fid's),
    plus the real features and labels where the file keeps them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID reference statistics {path}: no such file")
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"FID reference statistics {path}: needs arrays mu and sigma, "
                             f"has {sorted(f.files)}")
        stats = {"mu": f["mu"].astype(np.float64), "sigma": f["sigma"].astype(np.float64)}
        for key in ("features", "labels"):
            if f"real_{key}" in f:
                stats[key] = f[f"real_{key}"]
        stored = str(f["features"]) if "features" in f else None
    if features and stored and stored != features:
        raise ValueError(f"FID reference statistics {path} were made with {stored} features, "
                         f"not {features}")
    return stats
