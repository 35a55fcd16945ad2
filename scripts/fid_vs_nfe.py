"""Collect an evaluate.py sweep into an FID-vs-NFE table (Markdown) and plot (PNG).

    python evaluate.py -m ckpt=PATH metrics=[fid] num_samples=500 \\
        sampler=ddim,dpm_solver sampler.steps=10,20,50
    python scripts/fid_vs_nfe.py multirun/evaluate/<sweep> [more sweeps] [--out docs/fid_vs_nfe]

Every ``metrics.json`` under the sweep directory with an ``fid`` is one point; points are
grouped by sampler (name plus its non-default options, e.g. ``pc euler_maruyama``).
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


def collect(sweeps: list[Path]) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for path in sorted(p for sweep in sweeps for p in sweep.rglob("metrics.json")):
        m = json.loads(path.read_text())
        if "fid" not in m:
            continue
        s = m["sample_settings"]
        groups[label(s["sampler"])].append({"steps": s["steps"], "nfe": s["nfe"],
                                            "fid": m["fid"], "is": m.get("is"),
                                            "num_samples": s["num_samples"],
                                            "features": s["features"], "run": str(path.parent)})
    for rows in groups.values():
        rows.sort(key=lambda r: r["nfe"])
    return dict(groups)


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
    p.add_argument("sweeps", type=Path, nargs="+", help="multirun directories of evaluate.py")
    p.add_argument("--out", type=Path, default=None,
                   help="output stem (default: fid_vs_nfe in the first sweep)")
    args = p.parse_args()
    groups = collect(args.sweeps)
    if not groups:
        raise SystemExit(f"no metrics.json with an fid under {[str(s) for s in args.sweeps]}")
    stem = args.out or args.sweeps[0] / "fid_vs_nfe"
    stem.parent.mkdir(parents=True, exist_ok=True)
    md = table(groups)
    Path(f"{stem}.md").write_text(md)
    plot(groups, Path(f"{stem}.png"))
    print(md)
    print(f"wrote {stem}.md and {stem}.png")


if __name__ == "__main__":
    main()
