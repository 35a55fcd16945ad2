"""Collect an evaluate.py sweep into an FID-vs-NFE table (Markdown) and plot (PNG).

    python evaluate.py -m ckpt=PATH metrics=[fid] num_samples=500 \\
        sampler=ddim,dpm_solver sampler.steps=10,20,50
    python scripts/fid_vs_nfe.py multirun/evaluate/<sweep> [more sweeps] [--out docs/fid_vs_nfe]

Every ``metrics.json`` under the sweep directory with an ``fid`` is one point; points are
grouped by sampler (name plus its non-default options, e.g. ``pc euler_maruyama``). Several
models in one table and plot (a teacher and its few-step students): name each sweep,
``LABEL=DIR``, and the groups are ``LABEL: sampler``; ``--train LABEL=RUN`` adds the
training steps and wall time of each model's training run (its metrics.json).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(sampler: dict) -> str:
    name = sampler["name"]
    if name == "pc":
        parts = [sampler.get("predictor", "euler_maruyama"), sampler.get("corrector", "none")]
        text = "pc " + " + ".join(p for p in parts if p != "none")
        if sampler.get("diffusion", "sde") != "sde" or sampler.get("diffusion_scale", 1) != 1:
            text += f" (g~: {sampler.get('diffusion', 'sde')} x{sampler.get('diffusion_scale', 1)})"
        return text
    if name == "dpm_solver":
        return f"dpm_solver++ {sampler.get('order', 2)}M"
    if name == "ddim":
        return f"ddim eta={float(sampler.get('eta', 0.0))}"
    if name == "ode":
        return f"ode {sampler.get('method', 'rk45')}"
    return name


def named(arg: str) -> tuple[str, Path]:
    """``LABEL=DIR`` -> (LABEL, DIR); a bare DIR has no label."""
    name, sep, rest = arg.partition("=")
    return (name, Path(rest)) if sep and not Path(arg).exists() else ("", Path(arg))


def collect(sweeps: list[Path], labels: list[str] | None = None) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    labels = labels or [""] * len(sweeps)
    for model, sweep in zip(labels, sweeps):
        for path in sorted(sweep.rglob("metrics.json")):
            m = json.loads(path.read_text())
            if "fid" not in m or "sample_settings" not in m:
                continue
            s = m["sample_settings"]
            key = f"{model}: {label(s['sampler'])}" if model else label(s["sampler"])
            groups[key].append(point(m, s, path))
    for rows in groups.values():
        rows.sort(key=lambda r: r["nfe"])
    return dict(groups)


def point(m: dict, s: dict, path: Path) -> dict:
    return {"steps": s["steps"], "nfe": s["nfe"],
            "fid": m["fid"], "is": m.get("is"), "num_samples": s["num_samples"],
            "features": s["features"], "run": str(path.parent)}


def training(runs: list[str]) -> str:
    """A Markdown table of each ``LABEL=RUN`` training run's steps and wall time."""
    lines = ["| model | training steps | training wall time (s) |", "| --- | --- | --- |"]
    for arg in runs:
        name, run = named(arg)
        m = json.loads((run / "metrics.json").read_text())
        lines.append(f"| {name or run} | {m.get('steps', '')} | "
                     f"{m.get('train_wall_time_s', '')} |")
    return "\n".join(lines) + "\n"


def table(groups) -> str:
    lines = ["| sampler | steps | NFE | FID | IS | samples | features |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rows in groups.items():
        for r in rows:
            is_ = f"{r['is']:.2f}" if r["is"] is not None else ""
            lines.append(f"| {name} | {r['steps']} | {r['nfe']} | {r['fid']:.2f} | {is_} | "
                         f"{r['num_samples']} | {r['features']} |")
    return "\n".join(lines) + "\n"


def plot(groups, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, rows in groups.items():
        ax.plot([r["nfe"] for r in rows], [r["fid"] for r in rows], "o-", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(f"FID ({next(iter(groups.values()))[0]['features']} features)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweeps", nargs="+",
                   help="multirun directories of evaluate.py (LABEL=DIR to name a model)")
    p.add_argument("--train", nargs="*", default=[],
                   help="LABEL=RUN: training runs whose steps and wall time to list")
    p.add_argument("--out", type=Path, default=None,
                   help="output stem (default: fid_vs_nfe in the first sweep)")
    args = p.parse_args()
    labels, sweeps = zip(*(named(a) for a in args.sweeps))
    groups = collect(list(sweeps), list(labels))
    if not groups:
        raise SystemExit(f"no metrics.json with an fid under {[str(s) for s in sweeps]}")
    stem = args.out or sweeps[0] / "fid_vs_nfe"
    stem.parent.mkdir(parents=True, exist_ok=True)
    md = table(groups)
    if args.train:
        md += "\n" + training(args.train)
    Path(f"{stem}.md").write_text(md)
    plot(groups, Path(f"{stem}.png"))
    print(md)
    print(f"wrote {stem}.md and {stem}.png")


if __name__ == "__main__":
    main()
