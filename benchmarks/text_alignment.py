"""Caption accuracy and FID of text-to-image checkpoints against the classifier-free guidance
scale, on the held-out (unseen) and the seen digit pairs of ``data=mnist5k_pairs``.

    python benchmarks/text_alignment.py NAME=CKPT [NAME=CKPT ...] [--scales 1 2 3 5]
        [--splits unseen seen] [--n 250] [--sampler dpm_solver:20] [--out docs/text_alignment]
    python benchmarks/text_alignment.py --merge A.json B.json ... --out docs/text_alignment

Every number is evaluate.py's, run as a user runs it (one run per checkpoint x scale x split,
``metrics=[fid,half_fid]``, ``prompts=<split>``, ``guidance=cfg guidance.scale=w``):
``caption_accuracy`` (the shipped digit classifier reads both halves as the prompt names
them), ``half_fid`` (the 2n halves against MNIST-5k's digit statistics: the reference file
of 28x28 MNIST-5k runs, so a class-conditional model's 500-sample FID compares with n = 250)
and ``fid`` (the canvases' [left | right] features against the training canvases). The same
n prompts and seeds in every row. ``--out`` writes OUT.md (table), OUT.json and OUT.png
(caption accuracy and half FID against w).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("caption_accuracy", "left_accuracy", "right_accuracy", "order_free_accuracy",
          "half_fid", "fid")


def evaluate(ckpt: str, scale: float, split: str, n: int, sampler: str, seed: int) -> dict:
    name, steps = sampler.split(":")
    with tempfile.TemporaryDirectory() as out:
        args = [sys.executable, str(ROOT / "evaluate.py"), f"ckpt={ckpt}",
                "metrics=[fid,half_fid]", f"num_samples={n}", f"prompts={split}",
                f"sampler={name}", f"sampler.steps={steps}", "guidance=cfg",
                f"guidance.scale={scale}", f"seed={seed}", "extras.print_config=false",
                f"hydra.run.dir={out}"]
        start = time.perf_counter()
        proc = subprocess.run(args, cwd=out, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        if proc.returncode != 0:
            raise SystemExit(f"evaluate.py failed for {ckpt} w={scale} {split}:\n"
                             f"{proc.stderr[-2000:]}")
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    row = {k: metrics[k] for k in FIELDS}
    row.update(w=scale, split=split, n=n, nfe=metrics["sample_settings"]["nfe"],
               wall_s=round(time.perf_counter() - start, 1),
               global_step=metrics["global_step"])
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | prompts | w | caption accuracy | left | right | either order | half FID "
             "| canvas FID | NFE |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        either = r.get("order_free_accuracy")           # rows of before it was measured: -
        lines.append(f"| {r['model']} | {r['split']} | {r['w']:g} | {r['caption_accuracy']:.3f} "
                     f"| {r['left_accuracy']:.3f} | {r['right_accuracy']:.3f} "
                     f"| {'-' if either is None else format(either, '.3f')} "
                     f"| {r['half_fid']:.2f} | {r['fid']:.2f} | {r['nfe']} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for model in dict.fromkeys(r["model"] for r in rows):
        for split, style in (("unseen", "-o"), ("seen", "--s")):
            mine = [r for r in rows if r["model"] == model and r["split"] == split]
            if mine:
                w = [r["w"] for r in mine]
                a.plot(w, [r["caption_accuracy"] for r in mine], style, label=f"{model} {split}")
                b.plot(w, [r["half_fid"] for r in mine], style, label=f"{model} {split}")
    a.set(xlabel="CFG scale w", ylabel="caption accuracy", ylim=(0, 1))
    b.set(xlabel="CFG scale w", ylabel="half FID (digit features)", yscale="log")
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rows: list[dict], out: Path, settings: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows},
                                                   indent=1))
    out.with_suffix(".md").write_text(table(rows) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(table(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="NAME=CKPT")
    p.add_argument("--scales", nargs="+", type=float, default=[1, 2, 3, 5])
    p.add_argument("--splits", nargs="+", default=["unseen", "seen"])
    p.add_argument("--n", type=int, default=250)
    p.add_argument("--sampler", default="dpm_solver:20")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", nargs="+", default=None, help="JSON files of earlier runs")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows, settings = [], {"n": a.n, "sampler": a.sampler, "seed": a.seed}
    for path in a.merge or []:
        rows += json.loads(Path(path).read_text())["rows"]
    for spec in a.models:
        if "=" not in spec:
            raise SystemExit(f"{spec}: give NAME=CKPT")
        model, ckpt = spec.split("=", 1)
        for split in a.splits:
            for w in a.scales:
                row = {"model": model, **evaluate(ckpt, w, split, a.n, a.sampler, a.seed)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    if a.out:
        write(rows, Path(a.out), settings)
    else:
        print(table(rows))


if __name__ == "__main__":
    main()
