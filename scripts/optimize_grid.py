"""Optimise a sampler's time grid for one trained model and NFE budgets, and write the grids
to a file that ``sampler.grid=FILE`` reads (``scorelab.sampling.grid_search``).

    python scripts/optimize_grid.py CKPT --sampler unipc:order=2 --nfe 4 6 8 10 \\
        [--starts 256] [--reference unipc:order=3,steps=100] [--sweeps 6] --out grid.json
    python sample.py ckpt=CKPT sampler=unipc sampler.steps=6 sampler.grid=grid.json

For each budget the start grid is the sampler's own (its ``grid``, ``shift``, ``final``
options) with the most steps that fit the budget; the search minimises the RMS error against
the reference solution from ``--starts`` prior draws (seed ``--seed``); the script prints the
error before and after, and on ``--check`` fresh starts (another seed) so that the gain is
not an over-fit to the starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from sampler_peers import parse_spec  # noqa: E402  (one spec format)
from scorelab.cli.build import LoadedCheckpoint, sampler_settings  # noqa: E402
from scorelab.sampling import COMMON_OPTIONS as GRID_OPTIONS  # noqa: E402
from scorelab.sampling import SAMPLERS, steps_for_nfe, time_grid  # noqa: E402
from scorelab.sampling.grid_search import optimise_grid, solution_error  # noqa: E402
from scorelab.sampling.grids import save_grid_file  # noqa: E402


def starts(module, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return module.model.path.prior_sampling((n,) + module.data_shape, generator=g)


@torch.no_grad()
def solve(model, path, x_T, settings: dict) -> torch.Tensor:
    """The sampler ``settings`` {name, steps, grid options, options} run from ``x_T``."""
    options = {k: v for k, v in settings.items() if k not in ("name", "steps")}
    grid = {k: options.pop(k) for k in GRID_OPTIONS if k in options}
    ts = time_grid(settings["name"], path, settings["steps"], device=x_T.device, **grid)
    return torch.cat([SAMPLERS[settings["name"]](model, path, chunk.clone(), ts, **options)[0]
                      for chunk in x_T.split(128)])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--sampler", default="unipc:order=2",
                   help="name[:k=v,...]: a deterministic sampler and its options")
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 6, 8, 10])
    p.add_argument("--starts", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", type=int, default=256, help="fresh starts for the check (0: none)")
    p.add_argument("--reference", default="unipc:order=3,steps=100")
    p.add_argument("--sweeps", type=int, default=6)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    loaded = LoadedCheckpoint(args.ckpt, use_ema=True)
    module = loaded.module
    if module.takes_labels:
        p.error("optimize_grid.py needs an unconditional model")
    module.eval()
    path, model = module.model.path, module.guided_prediction_fn(None)
    settings = parse_spec(args.sampler)
    name = settings.pop("name")
    reference = sampler_settings(parse_spec(args.reference), path)
    x_T = starts(module, args.starts, args.seed)
    ref = solve(model, path, x_T, reference)
    if args.check:
        x_check = starts(module, args.check, args.seed + 1)
        ref_check = solve(model, path, x_check, reference)
    own = {k: settings.pop(k) for k in GRID_OPTIONS if k in settings}
    grids = {}
    for budget in args.nfe:
        steps = steps_for_nfe(path, name, budget, **own, **settings)
        if steps is None:
            print(f"NFE {budget}: no step count of {name} fits; skipped")
            continue
        sampler_settings({"name": name, "steps": steps, **own, **settings}, path)
        init = time_grid(name, path, steps, **own)
        ts, before, after = optimise_grid(model, path, x_T, ref, name, init, settings,
                                          sweeps=args.sweeps,
                                          log=lambda m, b=budget: print(f"NFE {b}: {m}",
                                                                        flush=True))
        grids[steps] = ts.tolist()
        line = f"NFE {budget} ({steps} steps): error {before:.4f} -> {after:.4f}"
        if args.check:
            fresh = [solution_error(model, path, x_check, ref_check, name, grid, settings)
                     for grid in (init, ts)]
            line += f"; fresh starts {fresh[0]:.4f} -> {fresh[1]:.4f}"
        print(line + "\n  grid " + " ".join(f"{t:.4f}" for t in ts.tolist()), flush=True)
    save_grid_file(args.out, grids, checkpoint=str(args.ckpt), sampler=name, options=settings,
                   start_grid=own, reference=reference, starts=args.starts, seed=args.seed)
    print(f"wrote {args.out}: grids for {', '.join(map(str, sorted(grids)))} steps")


if __name__ == "__main__":
    main()
