"""Baseline FIDs on the digit features: the scale a model's FID is read against.

    python scripts/fid_baselines.py [--dataset mnist5k] [--n 500]

Prints FID of the dataset against its own statistics (0), of two disjoint random halves,
of n random real images against the full statistics (the finite-sample floor of an
n-sample FID), and of uniform noise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from scorelab.data import DigitsDataModule, MNIST5kDataModule  # noqa: E402
from scorelab.metrics.features import DigitFeatures  # noqa: E402
from scorelab.metrics.fid import feature_statistics, frechet_distance  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist5k", choices=["mnist5k", "digits"])
    p.add_argument("--n", type=int, default=500, help="sample count of the floor estimate")
    args = p.parse_args()
    dm = (MNIST5kDataModule if args.dataset == "mnist5k" else DigitsDataModule)(batch_size=1)
    full = dm.load()
    x = torch.stack([full[i][0] for i in range(len(full))])
    extract = DigitFeatures()
    feats = extract(x)[0]
    ref = feature_statistics(feats)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(feats), generator=gen)
    half = len(feats) // 2
    rows = {
        "data vs itself": frechet_distance(ref, ref),
        f"two disjoint halves ({half} vs {len(feats) - half})": frechet_distance(
            feature_statistics(feats[perm[:half]]), feature_statistics(feats[perm[half:]])),
        f"{args.n} real images vs all": frechet_distance(
            feature_statistics(feats[perm[:args.n]]), ref),
        f"{args.n} uniform-noise images vs all": frechet_distance(
            feature_statistics(extract(torch.rand(args.n, *x.shape[1:], generator=gen) * 2
                                       - 1)[0]), ref),
    }
    print(f"FID on digit-classifier features, {args.dataset} ({len(feats)} images)")
    for name, value in rows.items():
        print(f"  {name:<40} {value:10.3f}")


if __name__ == "__main__":
    main()
