"""FID of ancestral sampling by reverse variance and step count, and the bits/dim of the
variational bound, VDM's ELBO and the PF-ODE, for models side by side (docs/variances.md).

    python evaluate.py -m ckpt=FIXED metrics=[fid] num_samples=500 sampler=ancestral \\
        sampler.steps=25,50,100,250 sampler.variance=posterior,upper,analytic \\
        hydra.sweep.dir=SWEEP_F
    python evaluate.py -m ckpt=LEARNED metrics=[fid] num_samples=500 sampler=ancestral \\
        sampler.steps=25,50,100,250 sampler.variance=posterior,upper,analytic,learned \\
        hydra.sweep.dir=SWEEP_L
    python evaluate.py ckpt=FIXED metrics=[vlb,elbo,bpd] num_samples=0 hydra.run.dir=LIK_F
    python evaluate.py ckpt=LEARNED metrics=[vlb,elbo,bpd] num_samples=0 hydra.run.dir=LIK_L
    python benchmarks/reverse_variances.py fixed=SWEEP_F,LIK_F learned=SWEEP_L,LIK_L \\
        --out docs/reverse_variances

Each NAME=DIR[,DIR...] is one model: every metrics.json under its directories with an
``fid`` from the ancestral sampler is a point (variance, steps), every one with ``vlb``,
``elbo`` or ``bpd`` gives its bits/dim. Writes <out>.md (tables), <out>.json and <out>.png
(FID against steps, one line per model and variance).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VARIANCES = ("posterior", "upper", "learned", "analytic")
BOUNDS = (("vlb", "vlb"), ("elbo", "elbo"), ("bpd", "bpd"))


def collect(dirs: list[Path]) -> dict:
    """{"fid": {variance: {steps: fid}}, "bounds": {key: value}, "settings": {...}}."""
    fid: dict = {}
    bounds: dict = {}
    for d in dirs:
        for path in sorted(d.rglob("metrics.json")):
            m = json.loads(path.read_text())
            s = m.get("sample_settings") or {}
            sampler = s.get("sampler") or {}
            if "fid" in m and sampler.get("predictor") == "ancestral":
                variance = sampler.get("variance", "posterior")
                fid.setdefault(variance, {})[int(s["steps"])] = round(float(m["fid"]), 3)
            for key, _ in BOUNDS:
                if key in m:
                    bounds[key] = round(float(m[key]), 4)
                    bounds[f"{key}_stderr"] = round(float(m.get(f"{key}_stderr", 0.0)), 4)
                    for term in ("prior", "diffusion", "decoder", "reconstruction"):
                        if f"{key}_{term}" in m:
                            bounds[f"{key}_{term}"] = round(float(m[f"{key}_{term}"]), 4)
                    if f"{key}_settings" in m:
                        bounds[f"{key}_settings"] = m[f"{key}_settings"]
    return {"fid": {v: dict(sorted(fid[v].items())) for v in VARIANCES if v in fid},
            "bounds": bounds}


def tables(models: dict) -> str:
    steps = sorted({n for m in models.values() for rows in m["fid"].values() for n in rows})
    lines = ["| model | variance | " + " | ".join(f"{n} steps" for n in steps) + " |",
             "| --- | --- |" + " --- |" * len(steps)]
    for name, m in models.items():
        for variance, rows in m["fid"].items():
            cells = [f"{rows[n]:.2f}" if n in rows else "" for n in steps]
            lines.append(f"| {name} | {variance} | " + " | ".join(cells) + " |")
    lines += ["", "| model | vlb (bits/dim) | elbo (bits/dim) | bpd, PF-ODE (bits/dim) |",
              "| --- | --- | --- | --- |"]
    for name, m in models.items():
        b = m["bounds"]
        cells = [f"{b[k]:.3f} ± {b[k + '_stderr']:.3f}" if k in b else "" for k, _ in BOUNDS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(models: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    styles = {"posterior": "o-", "upper": "s--", "learned": "^-", "analytic": "d:"}
    for name, m in models.items():
        for variance, rows in m["fid"].items():
            ax.plot(list(rows), list(rows.values()), styles[variance], label=f"{name}: {variance}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ancestral steps (NFE, + 1 for the final denoising)")
    ax.set_ylabel("FID (digit features, 500 samples)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="NAME=DIR[,DIR...] per model")
    p.add_argument("--out", type=Path, default=Path("reverse_variances"))
    args = p.parse_args()
    models = {}
    for spec in args.models:
        name, _, dirs = spec.partition("=")
        if not dirs:
            raise SystemExit(f"expected NAME=DIR[,DIR...], got {spec!r}")
        missing = [d for d in dirs.split(",") if not Path(d).is_dir()]
        if missing:
            raise SystemExit(f"{name}: no such directory: {', '.join(missing)}")
        models[name] = collect([Path(d) for d in dirs.split(",")])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    md = tables(models)
    Path(f"{args.out}.md").write_text(md)
    Path(f"{args.out}.json").write_text(json.dumps(models, indent=2) + "\n")
    plot(models, Path(f"{args.out}.png"))
    print(md)
    print(f"wrote {args.out}.md, .json and .png")


if __name__ == "__main__":
    main()
