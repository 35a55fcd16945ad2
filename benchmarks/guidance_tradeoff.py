"""Guidance trade-off of a class-conditional checkpoint: FID and the digit classifier's accuracy
on samples of each requested class, for guidance kinds x scales x samplers.

    python benchmarks/guidance_tradeoff.py --merge A.json B.json ... --out docs/guidance_tradeoff
    python benchmarks/guidance_tradeoff.py CKPT [--n 500] [--scales 1 2 3 5]
        [--samplers dpm_solver:20 "pc:100:diffusion=sigma"] [--classifier CLF_CKPT]
        [--guide GUIDE_CKPT] [--no-cfg] [--interval SIGMA_MIN SIGMA_MAX] [--floor]
        [--out docs/guidance_tradeoff]

Every configuration draws the same n samples (label i % K for sample i; chunk k from the
generator seeded with (seed, k)), so rows differ only in the guidance. The numbers are the
metric registry's (``scorelab.metrics``), as evaluate.py computes them: ``fid`` on the
checkpoint dataset's feature extractor (the shipped digit classifier on MNIST) against the
whole dataset, ``class_fid`` (FID of each class against that class's images: mean and worst
class) and ``accuracy`` (that classifier's: mean over samples and the worst class). w = 1
is the unguided conditional model (classifier guidance: the unconditional prediction plus
one classifier gradient). ``--out`` writes OUT.md (table), OUT.png (FID vs accuracy, one
line per guidance and sampler) and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

from scorelab.cli.build import LoadedCheckpoint  # noqa: E402
from scorelab.cli.guide import build_guidance  # noqa: E402
from scorelab.cli.build import build_datamodule  # noqa: E402
from scorelab.metrics import build_metric  # noqa: E402
from scorelab.metrics.evaluation import sample_features  # noqa: E402
from scorelab.metrics.sample_pass import SampleEvaluation  # noqa: E402
from fid_vs_nfe import label  # noqa: E402
from sampler_gap import parse_spec  # noqa: E402

METRICS = ("fid", "class_fid", "accuracy")


def registry_metrics(loaded) -> SampleEvaluation:
    """FID, per-class FID and class accuracy from the registry, on the checkpoint data's
    default features (reference statistics and real features cached as evaluate.py's)."""
    dm = build_datamodule(loaded.cfg)
    return SampleEvaluation({m: build_metric(m) for m in METRICS}, dm)


def row_numbers(values: dict) -> dict:
    return {"fid": values["fid"], "class_fid": values.get("class_fid", float("nan")),
            "worst_class_fid": values.get("worst_class_fid", float("nan")),
            "accuracy": values["class_accuracy"],
            "worst_class_accuracy": values["worst_class_accuracy"],
            "per_class_accuracy": values["per_class_accuracy"],
            "per_class_fid": values.get("per_class_fid", [])}


def guidance_configs(scales, classifier, guide, cfg: bool = True,
                     interval=(0.0, float("inf"))) -> list[dict]:
    common = {"sigma_min": interval[0], "sigma_max": interval[1]}
    configs = [{"name": "cfg", "scale": float(w), **common} for w in scales] if cfg else []
    if classifier:
        configs += [{"name": "classifier", "scale": float(w), "classifier_ckpt": classifier,
                     **common} for w in scales]
    if guide:
        configs += [{"name": "autoguidance", "scale": float(w), "guide_ckpt": guide, **common}
                    for w in scales]
    return configs


def guidance_label(g: dict) -> str:
    lo, hi = g.get("sigma_min", 0.0), g.get("sigma_max", float("inf"))
    return g["name"] if (lo, hi) == (0.0, float("inf")) else f"{g['name']} [{lo:g}, {hi:g}]"


def real_floor(loaded, ev: SampleEvaluation, n: int, seed: int) -> dict:
    """The metrics of n real images drawn class-balanced like the samples (image i of class
    i % K, at random within the class): the floor the rows are to be read against."""
    x, y = zip(*build_datamodule(loaded.cfg).load())
    x, y = torch.stack(list(x)), torch.tensor([int(v) for v in y])
    g = torch.Generator().manual_seed(seed)
    want = torch.arange(n) % loaded.num_classes
    pick = torch.empty(n, dtype=torch.long)
    for c in range(loaded.num_classes):
        pool = (y == c).nonzero().squeeze(1)
        mine = (want == c).nonzero().squeeze(1)
        pick[mine] = pool[torch.randperm(len(pool), generator=g)[:len(mine)]]
    union = {"index": torch.arange(n), "labels": want}
    for key, extractor in ev.extractors.items():
        union[f"features/{key}"], union[f"logits/{key}"] = extractor(x[pick])
    return {"guidance": "real images", "scale": float("nan"), "sampler": "-", "nfe": 0,
            **row_numbers(ev.compute(union)), "num_samples": n,
            **ev.settings(), "seconds": 0.0}


def evaluate(ckpt, configs, samplers, n, batch, seed, floor: bool = False) -> list[dict]:
    loaded = LoadedCheckpoint(ckpt)
    module = loaded.module
    ev = registry_metrics(loaded)
    rows = [real_floor(loaded, ev, n, seed)] if floor else []
    if floor:
        print(f"real images, class-balanced: FID {rows[0]['fid']:.2f}  acc "
              f"{rows[0]['accuracy']:.3f}", flush=True)
    for spec in samplers:
        settings = parse_spec(spec)
        for g in configs:
            module.set_guidance(build_guidance(g, module))
            start = time.perf_counter()

            def sample_fn(m, y, generator, settings=settings):
                res = module.sample(m, y=y, generator=generator, sampler=settings)
                return res.x, res.nfe

            union, nfe = sample_features(sample_fn, ev.extractors, n, batch, seed, "cpu",
                                         num_classes=loaded.num_classes)
            rows.append({"guidance": guidance_label(g), "scale": g["scale"],
                         "sampler": label(settings), "settings": settings, "nfe": nfe,
                         **row_numbers(ev.compute(union)), "num_samples": n,
                         **ev.settings(), "seconds": round(time.perf_counter() - start, 1)})
            r = rows[-1]
            print(f"{r['guidance']:<22} w={r['scale']:<4} {r['sampler']:<24} NFE {nfe:>4}  "
                  f"FID {r['fid']:7.2f}  class FID {r['class_fid']:7.2f}  acc "
                  f"{r['accuracy']:.3f} (worst {r['worst_class_accuracy']:.3f})  "
                  f"({r['seconds']} s)", flush=True)
    return rows


def table(rows) -> str:
    lines = ["| model | guidance | w | sampler | NFE | FID | class FID | accuracy | worst class |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        w = "-" if r["scale"] != r["scale"] else f"{r['scale']:g}"       # NaN: real images
        lines.append(f"| {r.get('model', '')} | {r['guidance']} | {w} | {r['sampler']} | "
                     f"{r['nfe']} | {r['fid']:.2f} | {r.get('class_fid', float('nan')):.2f} | "
                     f"{r['accuracy']:.3f} | {r['worst_class_accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r.get('model', '')}: {r['guidance']}, {r['sampler']}"
                          if r["guidance"] != "real images" else "real images", []).append(r)
    for name, g in groups.items():
        if name == "real images":
            ax.axhline(g[0]["fid"], color="grey", ls=":", lw=1, label="real images (floor)")
            continue
        g = sorted(g, key=lambda r: r["scale"])
        ax.plot([r["accuracy"] for r in g], [r["fid"] for r in g], "o-", label=name)
        for r in g:
            ax.annotate(f"w={r['scale']:g}", (r["accuracy"], r["fid"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("digit-classifier accuracy on samples of the requested digit")
    ax.set_ylabel("FID (digit features)")
    ax.set_title("Guidance trade-off, MNIST-5k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", nargs="?", help="class-conditional (or, with --no-cfg, any) checkpoint")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="instead of evaluating: one table and plot of these OUT.json files")
    p.add_argument("--model", default=None,
                   help="a name for the checkpoint in the table (default: its run directory)")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--batch", type=int, default=125)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scales", type=float, nargs="+", default=[1, 2, 3, 5])
    p.add_argument("--samplers", nargs="+", default=["dpm_solver:20", "pc:100:diffusion=sigma"])
    p.add_argument("--classifier", default=None, help="noisy classifier checkpoint")
    p.add_argument("--guide", default=None, help="autoguidance guide checkpoint")
    p.add_argument("--interval", type=float, nargs=2, default=[0.0, float("inf")],
                   metavar=("SIGMA_MIN", "SIGMA_MAX"),
                   help="guidance interval in noise level sigma / alpha")
    p.add_argument("--floor", action="store_true",
                   help="add a row for n real images drawn class-balanced (the FID floor)")
    p.add_argument("--no-cfg", action="store_true",
                   help="skip classifier-free guidance (an unconditional checkpoint)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.merge:
        rows = [r for f in args.merge for r in json.loads(f.read_text())]
        write(rows, args.out)
        return
    if not args.ckpt:
        p.error("give a checkpoint (or --merge)")
    torch.manual_seed(args.seed)
    configs = guidance_configs(args.scales, args.classifier, args.guide, not args.no_cfg,
                               tuple(args.interval))
    rows = evaluate(args.ckpt, configs, args.samplers, args.n, args.batch, args.seed,
                    args.floor)
    model = args.model or Path(args.ckpt).resolve().parent.parent.name
    for r in rows:
        r["model"] = model
    write(rows, args.out)


def write(rows, out: Path | None) -> None:
    print(table(rows))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.md").write_text(table(rows))
        Path(f"{out}.json").write_text(json.dumps(rows, indent=1))
        plot(rows, Path(f"{out}.png"))
        print(f"wrote {out}.md, .png and .json")


if __name__ == "__main__":
    main()
