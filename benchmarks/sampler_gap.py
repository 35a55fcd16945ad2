"""FID of one checkpoint under several samplers, all from the same initial noise: the gap
between the deterministic samplers (DDIM eta=0, DPM-Solver++, EDM Heun) and the stochastic
ones (PC Euler–Maruyama) that says whether the trained score is good enough for an ODE.

    python benchmarks/sampler_gap.py CKPT [CKPT ...] [--n 500] [--samplers SPEC ...]
        [--names NAME ...] [--out docs/sampler_gap]

A sampler spec is ``name:steps[:key=value,...]``, e.g. ``ddim:50``, ``dpm_solver:20``,
``edm:18`` (Heun, 35 NFE), ``pc:250:predictor=euler_maruyama,denoise=true``,
``ode:10:method=heun`` (20 NFE). Defaults:
the issue's table (DDIM 50, DPM-Solver++ 2M 20, EDM 18 steps, PC Euler–Maruyama 100 and 250).
Sample chunk k of every sampler starts from the prior drawn by the generator seeded with
(seed, k), so samplers differ only in how they integrate. FID uses the checkpoint
dataset's feature extractor (the shipped digit classifier for the digit datasets) against
the whole dataset's statistics. With ``--out`` the table goes to ``OUT.md`` and an
FID-vs-NFE plot to ``OUT.png``; ``--json`` keeps every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from scorelab.cli.build import LoadedCheckpoint, build_datamodule, sampler_settings  # noqa: E402
from scorelab.metrics.evaluation import (reference_statistics, resolve_features,  # noqa: E402
                                         sample_features, sample_metrics)
from scorelab.metrics.features import get_extractor  # noqa: E402
from fid_vs_nfe import label, plot, table  # noqa: E402  (scripts/: one table / plot format)

DEFAULT_SAMPLERS = ["ddim:50", "dpm_solver:20", "edm:18",
                    "pc:100:predictor=euler_maruyama,corrector=none,denoise=true",
                    "pc:250:predictor=euler_maruyama,corrector=none,denoise=true"]


def parse_options(text: str) -> dict:
    """``k=v,...`` -> {k: v} with ints, floats and true / false read as such."""
    options = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=", 1)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        options[key] = {"true": True, "false": False}.get(value, value) \
            if isinstance(value, str) else value
    return options


def parse_spec(spec: str) -> dict:
    """``name:steps[:k=v,...]`` -> a validated sampler settings dict."""
    name, steps, *rest = spec.split(":")
    return sampler_settings({"name": name, "steps": int(steps),
                             **parse_options(rest[0] if rest else "")})


def features_and_reference(loaded: LoadedCheckpoint):
    """The checkpoint dataset's feature extractor and its whole-dataset statistics."""
    dm = build_datamodule(loaded.cfg)
    extractor = get_extractor(resolve_features("auto", dm.name))
    reference, _ = reference_statistics(dm.load(), dm.name, extractor,
                                        root=getattr(dm, "root", None))
    return extractor, reference


def evaluate(ckpt: str, specs: list[str], n: int, batch: int, seed: int,
             use_ema: bool = True) -> list[dict]:
    loaded = LoadedCheckpoint(ckpt, use_ema=use_ema)
    module = loaded.module
    extractor, reference = features_and_reference(loaded)
    rows = []
    for spec in specs:
        settings = parse_spec(spec)
        start = time.perf_counter()

        def sample_fn(m, y, generator, settings=settings):
            res = module.sample(m, y=y, generator=generator, sampler=settings)
            return res.x, res.nfe

        union, nfe = sample_features(sample_fn, extractor, n, batch, seed, "cpu",
                                     num_classes=loaded.num_classes if module.conditional else 0)
        metrics = sample_metrics(union, reference)
        rows.append({"ckpt": ckpt, "sampler": label(settings), "settings": settings,
                     "steps": settings["steps"], "nfe": nfe, "fid": metrics["fid"],
                     "is": metrics["is"], "num_samples": n, "features": extractor.name,
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"{ckpt}  {label(settings):<28} steps {settings['steps']:>4}  NFE {nfe:>4}  "
              f"FID {metrics['fid']:8.2f}  IS {metrics['is']:5.2f}  "
              f"({rows[-1]['seconds']} s)", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpts", nargs="+")
    p.add_argument("--n", type=int, default=500, help="samples per sampler")
    p.add_argument("--batch", type=int, default=125, help="samples per chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--samplers", nargs="+", default=DEFAULT_SAMPLERS)
    p.add_argument("--out", type=Path, default=None, help="stem of OUT.md / OUT.png")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--names", nargs="+", default=None,
                   help="one short name per checkpoint for the table and plot (several "
                        "checkpoints: default their run directories)")
    args = p.parse_args()
    names = args.names or [Path(c).parent.parent.name for c in args.ckpts]
    if len(names) != len(args.ckpts):
        p.error("--names needs one name per checkpoint")
    torch.manual_seed(args.seed)
    rows = [r for ckpt in args.ckpts for r in evaluate(ckpt, args.samplers, args.n,
                                                       args.batch, args.seed, not args.raw)]
    for ckpt in args.ckpts:
        mine = [r for r in rows if r["ckpt"] == ckpt]
        best = min(r["fid"] for r in mine)
        print(f"{ckpt}: best FID {best:.2f}; ratio to best: " + ", ".join(
            f"{r['sampler']} {r['steps']}: {r['fid'] / best:.2f}" for r in mine))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.out:
        groups: dict[str, list[dict]] = {}
        model = dict(zip(args.ckpts, names))
        for r in rows:
            key = r["sampler"] if len(args.ckpts) == 1 else f"{model[r['ckpt']]}: {r['sampler']}"
            groups.setdefault(key, []).append(r)
        for g in groups.values():
            g.sort(key=lambda r: r["nfe"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text(table(groups))
        plot(groups, Path(f"{args.out}.png"))
        print(f"wrote {args.out}.md and {args.out}.png")


if __name__ == "__main__":
    main()
