"""A latent diffusion model against a pixel-space one: FID of decoded samples (the dataset's
feature extractor, against the pixel dataset's statistics), training throughput and time,
sampling time, from two finished train.py runs.

    python benchmarks/latent_vs_pixel.py --pixel RUN_DIR --latent RUN_DIR [RUN_DIR ...] [--n 500]
        [--names NAME ...] [--samplers edm:18 dpm_solver:20] [--floor docs/autoencoder_mnist5k.json]
        [--out docs/latent_vs_pixel]

Both models sample from the same initial noise per chunk (``sampler_gap.evaluate``), on this
process's threads. Training numbers come from each run's metrics.json (its own wall time).
``--floor``: the autoencoder_floor.py report (reconstruction PSNR and FID) shown beside.
Writes OUT.md and OUT.json with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scorelab.cli.build import LoadedCheckpoint  # noqa: E402
from sampler_gap import evaluate  # noqa: E402


def describe_run(run: Path) -> dict:
    """Training numbers of a run directory (metrics.json, its checkpoint's config)."""
    metrics = json.loads((run / "metrics.json").read_text())
    loaded = LoadedCheckpoint(str(run / "checkpoints" / "last.ckpt"))
    module = loaded.module
    batch = int(loaded.cfg.data.batch_size)
    net = sum(p.numel() for p in module.model.parameters())
    latent = module.latent
    return {"run": str(run), "space": "latent" if latent is not None else "pixel",
            "shape": list(module.data_shape),
            "backbone": loaded.cfg.backbone._target_.rsplit(".", 1)[-1],
            "network_params_m": round(net / 1e6, 2),
            "autoencoder_params_m": round(sum(p.numel() for p in latent.parameters()) / 1e6, 2)
            if latent is not None else 0.0,
            "train_steps": metrics["steps"], "batch_size": batch,
            "train_wall_time_s": metrics["train_wall_time_s"],
            "train_images_per_s": round(metrics["steps"] * batch
                                        / metrics["train_wall_time_s"], 1),
            "val_loss": metrics["val_loss"]}


def table(rows: list[dict], floor: dict | None) -> str:
    lines = ["| model | space (shape) | network | train steps | train time | train images/s | "
             "sampler (NFE) | FID | sampling 500 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['space']} {'×'.join(map(str, r['shape']))} | {r['backbone']} "
            f"{r['network_params_m']} M | {r['train_steps']} | {r['train_wall_time_s']:.0f} s | "
            f"{r['train_images_per_s']} | {r['sampler']} ({r['nfe']}) | {r['fid']:.2f} | "
            f"{r['seconds']:.1f} s |")
    if floor:
        lines.append("")
        lines.append(f"Autoencoder floor: reconstruction PSNR {floor['psnr_heldout']:.1f} dB "
                     f"(held-out), FID of {floor['n']} reconstructions "
                     f"{floor['fid_reconstructions']:.2f} against "
                     f"{floor['fid_real_same_images']:.2f} for the same real images.")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pixel", type=Path, required=True)
    p.add_argument("--latent", type=Path, nargs="+", required=True)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--batch", type=int, default=125)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samplers", nargs="+", default=["edm:18", "dpm_solver:20"])
    p.add_argument("--names", nargs="+", default=None, help="one name per latent run")
    p.add_argument("--floor", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    rows = []
    names = args.names or [f"latent {i + 1}" if len(args.latent) > 1 else "latent"
                           for i in range(len(args.latent))]
    if len(names) != len(args.latent):
        p.error("--names needs one name per latent run")
    runs = [("pixel", args.pixel)] + list(zip(names, args.latent))
    for name, run in runs:
        info = describe_run(run)
        for r in evaluate(str(run / "checkpoints" / "last.ckpt"), args.samplers, args.n,
                          args.batch, args.seed):
            rows.append({"name": name, **info, **r})
    floor = json.loads(args.floor.read_text()) if args.floor else None
    text = table(rows, floor)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text(text)
        Path(f"{args.out}.json").write_text(json.dumps({"rows": rows, "floor": floor,
                                                        "threads": torch.get_num_threads()},
                                                       indent=1))
        print(f"wrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
    main()
