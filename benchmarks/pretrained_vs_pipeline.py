"""A published network under scorelab's samplers next to diffusers' own pipelines: FID at
each NFE, every sampler starting chunk k from the noise of the generator seeded (seed, k).

    python benchmarks/pretrained_vs_pipeline.py PIPELINE_DIR --data mnist5k [--nfe 10 20]
        [--n 500] [--batch 250] [--samplers SPEC ...] [--pipelines NAME ...]
        [--out docs/pretrained_fid]

PIPELINE_DIR is what ``model=diffusers model.pretrained=`` takes (a ``save_pretrained``
directory, e.g. from ``scripts/train_diffusers_unet.py``). scorelab's side samples through
``LoadedPretrained`` (``sample.py`` / ``evaluate.py``'s code path): a spec is
``name[:key=value,...]`` (``ddim:grid=scheduler``, ``dpm_solver:order=2``); its step count
is the most that meets the NFE budget. diffusers' side (``--pipelines``): ``ddim``
(``DDIMPipeline``, eta 0), ``dpm2m`` and ``ddpm`` (``DDPMPipeline`` with a
``DPMSolverMultistepScheduler`` / its own ``DDPMScheduler``), each scheduler made
``from_config`` of the pipeline's. The pipelines draw their initial noise as
``randn(shape, generator)``, as scorelab's prior does, so ``ddim`` here and scorelab's
``ddim:grid=scheduler`` integrate from the same noise on the same timesteps and give the same
FID up to float rounding. FID: the dataset's feature extractor against the whole dataset
(as evaluate.py). ``--out`` writes OUT.md, OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from sampler_gap import features_and_reference  # noqa: E402  (one FID set-up)
from sampler_peers import parse_spec  # noqa: E402
from fid_vs_nfe import label  # noqa: E402
from scorelab.cli.build import sampler_settings  # noqa: E402
from scorelab.cli.pretrained import LoadedPretrained  # noqa: E402
from scorelab.conf import CONF_DIR  # noqa: E402
from scorelab.metrics.evaluation import sample_features, sample_metrics  # noqa: E402
from scorelab.sampling import steps_for_nfe  # noqa: E402

SAMPLERS = ["ddim:grid=scheduler", "dpm_solver:grid=scheduler",
            "pc:predictor=ancestral,corrector=none,grid=scheduler", "dpm_solver", "unipc"]
PIPELINES = ("ddim", "dpm2m", "ddpm")


def pipeline_draw(name: str, pipe_dir: Path, unet):
    """draw(steps, n, generator) -> (x in [-1, 1], nfe) by diffusers' own pipeline."""
    import diffusers
    config = diffusers.DDPMScheduler.load_config(str(pipe_dir), subfolder="scheduler")
    if name == "ddim":
        pipe = diffusers.DDIMPipeline(unet, diffusers.DDIMScheduler.from_config(config))
        extra = {"eta": 0.0}
    else:
        cls = diffusers.DPMSolverMultistepScheduler if name == "dpm2m" else diffusers.DDPMScheduler
        pipe = diffusers.DDPMPipeline(unet, cls.from_config(config))
        extra = {}
    pipe.set_progress_bar_config(disable=True)

    def draw(steps, n, generator):
        images = pipe(batch_size=n, generator=generator, num_inference_steps=steps,
                      output_type="np", **extra).images
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() * 2 - 1
        return x, steps
    return draw


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pipeline")
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samplers", nargs="*", default=SAMPLERS)
    ap.add_argument("--pipelines", nargs="*", default=list(PIPELINES), choices=PIPELINES)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    data = OmegaConf.load(CONF_DIR / "data" / f"{args.data}.yaml")
    loaded = LoadedPretrained({"pretrained": args.pipeline, "local_files_only": True}, data)
    module = loaded.module
    extractor, reference = features_and_reference(loaded)
    runs = []
    for budget in args.nfe:
        for name in args.pipelines:
            runs.append((f"diffusers {name}", budget, {"steps": budget},
                         pipeline_draw(name, Path(args.pipeline), module.model.backbone.net)))
        for spec in args.samplers:
            settings = parse_spec(spec)
            opts = {k: v for k, v in settings.items() if k not in ("name", "steps")}
            steps = steps_for_nfe(module.model.path, settings["name"], budget, **opts)
            if steps is None:
                print(f"{spec}: no step count gives NFE {budget}; skipped")
                continue
            settings = sampler_settings({**settings, "steps": steps}, module.model.path,
                                        module.model)

            def draw(steps, n, generator, settings=settings):
                res = module.sample(n, generator=generator, sampler=settings)
                return res.x, res.nfe
            tag = label(settings) + (" (scheduler grid)" if settings.get("grid") == "scheduler"
                                     else "")
            runs.append((f"scorelab {tag}", budget, settings, draw))
    rows = []
    for name, budget, settings, draw in runs:
        start = time.perf_counter()
        union, nfe = sample_features(lambda m, y, g, d=draw, s=settings: d(s["steps"], m, g),
                                     extractor, args.n, args.batch, args.seed, "cpu")
        fid = sample_metrics(union, reference)["fid"]
        rows.append({"sampler": name, "nfe": nfe, "settings": settings, "fid": fid,
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"{name:<52} NFE {nfe:>3}  FID {fid:8.3f}  ({rows[-1]['seconds']} s)",
              flush=True)
    if args.out:
        write(rows, args, loaded.description)


def write(rows, args, description) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    args.out.parent.mkdir(parents=True, exist_ok=True)
    budgets = sorted({r["nfe"] for r in rows})
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    lines = ["| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
             "| --- |" + " --- |" * len(budgets)]
    for name in names:
        cells = [next((f"{r['fid']:.2f}" for r in rows if r["sampler"] == name
                       and r["nfe"] == b), "") for b in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    head = (f"FID ({args.n} samples, seed {args.seed}) of `{args.pipeline}` "
            f"({description['network']}, {description['scheduler']}) on {args.data}.\n\n")
    args.out.with_suffix(".md").write_text(head + "\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"pipeline": str(args.pipeline), "data": args.data, "n": args.n, "seed": args.seed,
         "model": description, "rows": rows}, indent=1, default=str) + "\n")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in names:
        mine = [r for r in rows if r["sampler"] == name]
        ax.plot([r["nfe"] for r in mine], [r["fid"] for r in mine],
                "s--" if name.startswith("diffusers") else "o-", label=name)
    ax.set_xlabel("NFE")
    ax.set_ylabel("FID")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
