"""Inpainting grid of a digit checkpoint: for each mask, a row of inputs (hole blank), a row of
samples and a row of originals, plus the numbers that say it worked: the largest change of a
known pixel (0: pasted exactly), the shipped digit classifier's accuracy on the inpainted
digits against the originals' labels (and on the originals, its ceiling; a hole can remove
what made a 7 a 7, so a different digit is no failure) and its confidence (mean top-class
probability: does it see a digit at all?).

    python scripts/inpainting_grid.py CKPT [--n 100] [--show 10] [--masks centre_square left_half
        random_strokes] [--sampler dpm_solver:20] [--n-resample 1] [--jump-length 10]
        [--out docs/inpainting_mnist]

Images are the validation split's first n (sample i: image i; a conditional model gets
each image's label); the grid shows the first ``show``. Writes OUT.png and OUT.json.
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

from scorelab.cli.build import LoadedCheckpoint, build_datamodule  # noqa: E402
from scorelab.cli.task import constraint_for, draw_controlled, observations  # noqa: E402
from scorelab.data.base import inverse_scaler  # noqa: E402
from scorelab.metrics.evaluation import resolve_features  # noqa: E402
from scorelab.metrics.features import get_extractor  # noqa: E402
from sampler_gap import parse_spec  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--n", type=int, default=100, help="images inpainted and scored")
    p.add_argument("--show", type=int, default=10, help="images shown per row")
    p.add_argument("--masks", nargs="+", default=["centre_square", "left_half",
                                                  "random_strokes"])
    p.add_argument("--sampler", default="dpm_solver:20")
    p.add_argument("--n-resample", type=int, default=1)
    p.add_argument("--jump-length", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/inpainting_mnist"))
    args = p.parse_args()
    from torchvision.utils import save_image

    loaded = LoadedCheckpoint(args.ckpt)
    settings = parse_spec(args.sampler)
    extractor = get_extractor(resolve_features("auto", build_datamodule(loaded.cfg).name))
    rows, report = [], {"ckpt": args.ckpt, "sampler": settings, "n_resample": args.n_resample,
                        "jump_length": args.jump_length, "masks": {}}
    for mask in args.masks:
        task = {"name": "inpaint", "mask": mask, "index": 0, "mask_seed": 0,
                "n_resample": args.n_resample, "jump_length": args.jump_length}
        obs, labels = observations(task, loaded, args.n)
        y = labels if loaded.module.takes_labels else None
        x, nfe = draw_controlled(task, loaded, settings, obs, y, args.seed, "cpu", args.n)
        constraint = constraint_for(task, loaded, obs)
        known_change = (constraint.paste(x) - x).abs().max().item()
        shown = constraint.paste(torch.full_like(obs, -1.0))
        with torch.no_grad():
            logits, logits_obs = extractor(x)[1], extractor(obs)[1]
        acc = (logits.argmax(1) == labels).double().mean().item()
        ceiling = (logits_obs.argmax(1) == labels).double().mean().item()
        # how sure the classifier is that it sees *a* digit (any class)
        conf = logits.softmax(1).max(1).values.mean().item()
        conf_obs = logits_obs.softmax(1).max(1).values.mean().item()
        report["masks"][mask] = {"known_max_abs_change": known_change, "nfe": nfe,
                                 "digit_accuracy": acc, "digit_accuracy_originals": ceiling,
                                 "confidence": conf, "confidence_originals": conf_obs,
                                 "hole_fraction": float((~constraint.known).float().mean())}
        print(f"{mask:<15} known pixels max change {known_change:.1e}  NFE {nfe}  "
              f"digit accuracy {acc:.2f} (originals {ceiling:.2f})  confidence {conf:.2f} "
              f"(originals {conf_obs:.2f})", flush=True)
        rows += [shown[:args.show], x[:args.show], obs[:args.show]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(inverse_scaler(torch.cat(rows), True), f"{args.out}.png", nrow=args.show,
               padding=2, pad_value=0.5)
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}.png and {args.out}.json")


if __name__ == "__main__":
    main()
