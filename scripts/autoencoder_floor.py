"""What a stage-1 autoencoder allows a latent diffusion model: reconstruction PSNR and the FID
of reconstructions (the floor a latent model's FID can reach), on held-out and on random
images, against the dataset's statistics on its feature extractor.

    python scripts/autoencoder_floor.py CKPT [--n 500] [--out docs/autoencoder_mnist5k]

Reconstructions are D(mean of E(x)) of n random dataset images (seed 0); the same n real
images give the finite-sample FID floor. Writes OUT.json and OUT.png (originals over their
reconstructions) with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scorelab.latent.autoencoder import psnr  # noqa: E402
from scorelab.cli.build import LoadedCheckpoint, build_datamodule  # noqa: E402
from scorelab.data.base import inverse_scaler  # noqa: E402
from scorelab.metrics.fid import feature_statistics, frechet_distance  # noqa: E402
from sampler_gap import features_and_reference  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    loaded = LoadedCheckpoint(args.ckpt, kind="autoencoder")
    ae = loaded.module.model
    extractor, reference = features_and_reference(loaded)
    dm = build_datamodule(loaded.cfg)
    dm.setup("validate")
    full = dm.load()
    pick = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[:args.n]
    x = torch.stack([full[int(i)][0] for i in pick])
    val = torch.stack([dm.val_set[i][0] for i in range(min(args.n, len(dm.val_set)))])
    with torch.no_grad():
        rec, rec_val = ae.reconstruct(x).clamp(-1, 1), ae.reconstruct(val).clamp(-1, 1)
        fid_rec = frechet_distance(feature_statistics(extractor(rec)[0]), reference)
        fid_real = frechet_distance(feature_statistics(extractor(x)[0]), reference)
    report = {"ckpt": args.ckpt, "n": args.n, "latent_shape": list(ae.latent_shape),
              "psnr_random": float(psnr(rec, x)), "psnr_heldout": float(psnr(rec_val, val)),
              "num_heldout": len(val), "fid_reconstructions": fid_rec,
              "fid_real_same_images": fid_real, "features": extractor.name}
    print(json.dumps(report, indent=1))
    if args.out:
        from torchvision.utils import save_image
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=1))
        save_image(inverse_scaler(torch.cat([val[:16], rec_val[:16]]), True),
                   f"{args.out}.png", nrow=16, padding=2)


if __name__ == "__main__":
    main()
