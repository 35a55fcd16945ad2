"""scorelab's training-free samplers against diffusers' schedulers on one checkpoint, at
equal NFE, from the same initial noise: FID for every NFE budget, with its noise level.

    python benchmarks/sampler_peers.py CKPT [--nfe 4 6 8 10 15 20] [--n 500] [--seeds 0 1]
        [--samplers SPEC ...] [--peers NAME ...] [--out docs/sampler_peers_<model>]

A scorelab spec is ``name[:key=value,...]`` (``unipc:order=3,grid=logsnr``,
``dpm_solver:order=2,shift=3``); for each budget the script takes the most steps whose NFE
fits it (EDM's Heun: 2 a step, 1 for a step from alpha = 0 or to t = 0) and skips a spec
that cannot meet the budget exactly; a grid file (``grid=FILE`` from
``scripts/optimize_grid.py``) offers only its own step counts. Peers are diffusers'
schedulers on the same network: on the linear path ``euler`` (FlowMatchEulerDiscrete),
``heun`` (FlowMatchHeunDiscrete), ``dpm2m`` and ``unipc`` (DPMSolverMultistep /
UniPCMultistep with flow sigmas), each with the shifts ``--peer-shifts``; on a VP SDE the
DDPM-discretised schedule of the model's own path (alphas_cumprod_k = alpha((k + 1) / N)^2,
so timestep k is t = (k + 1) / N), with ``euler`` and ``heun`` the k-diffusion-style Euler /
Heun discrete schedulers.

Chunk k of every sampler, scorelab's and the peers', starts from the prior drawn by the
generator seeded with (seed, k). FID uses the dataset's feature extractor against the whole
dataset's statistics (as ``evaluate.py``); with two or more ``--seeds`` the table gives the
mean and, as the noise level, half the spread between seeds. ``--out`` writes OUT.md, OUT.png
and OUT.json; with ``--merge`` they also keep OUT.json's rows this run did not redo, so a
table can be built over several invocations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sampler_gap import features_and_reference, parse_options  # noqa: E402  (one FID set-up)
from scorelab.cli.build import LoadedCheckpoint, sampler_settings  # noqa: E402
from scorelab.metrics.evaluation import sample_features, sample_metrics  # noqa: E402
from scorelab.paths.interpolants import LinearPath  # noqa: E402
from scorelab.paths.sde import VPSDE  # noqa: E402
from scorelab.sampling import steps_for_nfe  # noqa: E402
from scorelab.sampling.grids import is_grid_file  # noqa: E402

NFES = [4, 6, 8, 10, 15, 20]
SAMPLERS = ["ode:method=euler", "ode:method=heun", "edm", "dpm_solver:order=2",
            "dpm_solver:order=3", "unipc:order=2", "unipc:order=3",
            "unipc:order=2,grid=uniform,shift=3", "unipc:order=3,final=zero",
            "dpm_solver:order=2,grid=uniform,shift=3"]
PEERS = ["euler", "heun", "dpm2m", "unipc"]


def parse_spec(spec: str) -> dict:
    """``name[:k=v,...]`` -> sampler settings without steps."""
    name, _, rest = spec.partition(":")
    return {"name": name, **parse_options(rest)}


def label(settings: dict) -> str:
    """``name[k=v,...]``; a grid file shows as ``grid=optimised(<file stem>)``."""
    def value(k, v):
        return f"optimised({Path(v).stem})" if k == "grid" and is_grid_file(v) else v
    extra = ",".join(f"{k}={value(k, v)}" for k, v in settings.items()
                     if k not in ("name", "steps"))
    return settings["name"] + (f"[{extra}]" if extra else "")


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` rows that ``new`` did not re-run (same sampler and budget), then ``new``."""
    done = {(r["sampler"], r["nfe_budget"]) for r in new}
    return [r for r in old if (r["sampler"], r["nfe_budget"]) not in done] + new


class Peer:
    """A diffusers scheduler's sampling loop on the module's network (EMA weights)."""

    def __init__(self, name: str, module, shift: float = 1.0):
        import diffusers

        self.name, self.module, self.path = name, module, module.model.path
        self.flow = isinstance(self.path, LinearPath)
        if not (self.flow or isinstance(self.path, VPSDE)):
            raise SystemExit(f"diffusers' schedulers are compared on the linear path and VP "
                             f"SDEs, not on {type(self.path).__name__}: --peers with no names")
        n_train = 1000
        if self.flow:
            common = dict(num_train_timesteps=n_train)
            flow = dict(common, prediction_type="flow_prediction", use_flow_sigmas=True,
                        flow_shift=shift)
            make = {"euler": lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=shift,
                                                                             **common),
                    "heun": lambda: diffusers.FlowMatchHeunDiscreteScheduler(shift=shift,
                                                                           **common),
                    "dpm2m": lambda: diffusers.DPMSolverMultistepScheduler(**flow),
                    "unipc": lambda: diffusers.UniPCMultistepScheduler(**flow)}
            self.t_of = lambda step: step / n_train
            self.label = f"diffusers {name}" + (f"[shift={shift:g}]" if shift != 1 else "")
        else:
            t = torch.arange(1, n_train + 1, dtype=torch.float64) / n_train
            ac = self.path.alpha_sigma(t)[0] ** 2
            betas = 1 - ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
            common = dict(num_train_timesteps=n_train, trained_betas=betas.numpy(),
                          prediction_type="v_prediction")
            make = {"euler": lambda: diffusers.EulerDiscreteScheduler(**common),
                    "heun": lambda: diffusers.HeunDiscreteScheduler(**common),
                    "dpm2m": lambda: diffusers.DPMSolverMultistepScheduler(**common),
                    "unipc": lambda: diffusers.UniPCMultistepScheduler(**common)}
            self.t_of = lambda step: (step + 1) / n_train
            self.label = f"diffusers {name}"
        self.make = make[name]

    def nfe(self, steps: int) -> int:
        scheduler = self.make()
        scheduler.set_timesteps(steps)
        return len(scheduler.timesteps)

    def steps_for(self, budget: int):
        best = None
        for steps in range(1, budget + 1):
            if self.nfe(steps) == budget:
                best = steps
        return best

    @torch.no_grad()
    def draw(self, steps: int, n: int, generator) -> tuple[torch.Tensor, int]:
        module = self.module
        x = self.path.prior_sampling((n,) + module.data_shape, generator=generator)
        predict = module.guided_prediction_fn(None)
        scheduler = self.make()
        scheduler.set_timesteps(steps)
        # the flow-matching schedulers start at unit scale and take the input unscaled
        x = x * getattr(scheduler, "init_noise_sigma", 1.0)
        scale = getattr(scheduler, "scale_model_input", lambda x, step: x)
        nfe = 0
        for step in scheduler.timesteps:
            x_in = scale(x, step)
            t = torch.full((n,), float(self.t_of(float(step))))
            pred = predict(x_in, t)
            out = pred.velocity if self.flow else pred.v
            x = scheduler.step(out, step, x).prev_sample
            nfe += 1
        return x, nfe


def fid_rows(loaded, runs, n, batch, seeds, extractor, reference):
    """FID of each (label, budget, draw(m, generator) -> (x, nfe)) for every seed."""
    rows = []
    for name, budget, settings, draw in runs:
        fids, start = [], time.perf_counter()
        for seed in seeds:
            union, nfe = sample_features(lambda m, y, g: draw(m, g), extractor, n, batch, seed,
                                         "cpu")
            fids.append(sample_metrics(union, reference)["fid"])
        mean = sum(fids) / len(fids)
        noise = (max(fids) - min(fids)) / 2 if len(fids) > 1 else float("nan")
        rows.append({"sampler": name, "nfe_budget": budget, "nfe": nfe, "settings": settings,
                     "fid": mean, "fid_noise": noise, "fids": fids,
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"{name:<46} NFE {nfe:>3}  FID {mean:8.2f} ± {noise:5.2f}  "
              f"({rows[-1]['seconds']} s)", flush=True)
    return rows


def verdict(ours: dict, peer: dict) -> str:
    """ahead / tie / behind on the mean FID: a tie when the gap is within the two rows'
    summed noise (half the seed spread each)."""
    gap, noise = peer["fid"] - ours["fid"], ours["fid_noise"] + peer["fid_noise"]
    return "tie" if abs(gap) <= noise else ("ahead" if gap > 0 else "behind")


def table(rows, budgets) -> str:
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    cell = {(r["sampler"], r["nfe_budget"]): r for r in rows}
    best = {b: min((r["fid"] for r in rows if r["nfe_budget"] == b), default=None)
            for b in budgets}
    lines = ["| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for name in names:
        cells = []
        for b in budgets:
            r = cell.get((name, b))
            if r is None:
                cells.append("–")
                continue
            text = f"{r['fid']:.2f} ± {r['fid_noise']:.2f}"
            cells.append(f"**{text}**" if r["fid"] == best[b] else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows, file: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["sampler"] for r in rows):
        mine = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in mine], [r["fid"] for r in mine], marker="o",
                linestyle="--" if name.startswith("diffusers") else "-", label=name)
    ax.set_xlabel("NFE")
    ax.set_ylabel("FID")
    ax.set_yscale("log")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(file, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--nfe", type=int, nargs="+", default=NFES)
    p.add_argument("--n", type=int, default=500, help="samples per sampler and seed")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--samplers", nargs="*", default=SAMPLERS)
    p.add_argument("--peers", nargs="*", default=PEERS)
    p.add_argument("--peer-shifts", type=float, nargs="+", default=[1.0, 3.0],
                   help="flow_shift of the peers on a flow path")
    p.add_argument("--out", type=Path, default=None, help="stem of OUT.md / .png / .json")
    p.add_argument("--merge", action="store_true",
                   help="keep OUT.json's rows that this run does not redo: the table and plot "
                        "then show every run so far")
    args = p.parse_args()
    if args.merge and args.out is None:
        p.error("--merge needs --out (the OUT.json to merge into)")
    torch.set_grad_enabled(False)
    loaded = LoadedCheckpoint(args.ckpt, use_ema=True)
    module = loaded.module
    if module.takes_labels or module.latent is not None:
        p.error("sampler_peers.py compares unconditional pixel-space models")
    path = module.model.path
    extractor, reference = features_and_reference(loaded)
    runs = []
    for spec in args.samplers:
        settings = parse_spec(spec)
        for budget in args.nfe:
            steps = steps_for_nfe(path, settings["name"], budget,
                                  **{k: v for k, v in settings.items() if k != "name"})
            if steps is None:
                continue
            full = sampler_settings({**settings, "steps": steps}, path)

            def draw(m, g, full=full):
                res = module.sample(m, generator=g, sampler=full)
                return res.x, res.nfe
            runs.append((label(settings), budget, full, draw))
    flow = isinstance(path, LinearPath)
    for name in args.peers:
        for shift in (args.peer_shifts if flow else [1.0]):
            peer = Peer(name, module, shift)
            for budget in args.nfe:
                steps = peer.steps_for(budget)
                if steps is not None:
                    runs.append((peer.label, budget, {"scheduler": name, "steps": steps,
                                                      "shift": shift},
                                 lambda m, g, peer=peer, steps=steps: peer.draw(steps, m, g)))
    rows = fid_rows(loaded, runs, args.n, args.batch, args.seeds, extractor, reference)
    if args.merge and Path(f"{args.out}.json").exists():
        rows = merge(json.loads(Path(f"{args.out}.json").read_text()), rows)
    budgets = sorted({r["nfe_budget"] for r in rows})
    print(table(rows, budgets))
    for b in budgets:
        mine = [r for r in rows if r["nfe_budget"] == b]
        ours = min((r for r in mine if not r["sampler"].startswith("diffusers")),
                   key=lambda r: r["fid"], default=None)
        peer = min((r for r in mine if r["sampler"].startswith("diffusers")),
                   key=lambda r: r["fid"], default=None)
        if ours and peer:
            print(f"NFE {b}: best scorelab {ours['sampler']} {ours['fid']:.2f}, best peer "
                  f"{peer['sampler']} {peer['fid']:.2f}: {verdict(ours, peer)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text(table(rows, budgets))
        Path(f"{args.out}.json").write_text(json.dumps(rows, indent=1, default=str))
        plot(rows, Path(f"{args.out}.png"))
        print(f"wrote {args.out}.md, .png and .json")


if __name__ == "__main__":
    main()
