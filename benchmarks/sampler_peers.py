"""scorelab's training-free samplers against diffusers' schedulers and k-diffusion's samplers
on one checkpoint, at equal NFE, from the same initial noise: FID for every NFE budget, with
its noise level.

    python benchmarks/sampler_peers.py CKPT [--nfe 4 6 8 10 15 20] [--n 500] [--seeds 0 1]
        [--samplers SPEC ...] [--peers NAME ...] [--kd-peers NAME ...]
        [--out docs/sampler_peers_<model>]

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
Heun discrete schedulers. On a VP or VE SDE the k-diffusion peers ``--kd-peers`` (default:
all of ``KD_PEERS`` when k-diffusion is installed) run k-diffusion's own samplers on its Karras
sigmas (rho 7) between the path's sigma/alpha at T and at eps, on the network as a denoiser
D(x / alpha, sigma / alpha) = x0_hat, the continuous t found from sigma by the path's log-SNR
inverse (``ve_denoiser``); their noise comes from the same generator. k-diffusion's package
``__init__`` imports its whole training stack (clip, wandb, kornia, ... some pinned to
numpy < 2), so the script loads only its sampling module: ``pip install --no-deps k-diffusion
torchsde trampoline``.

Chunk k of every sampler, scorelab's and the peers', starts from the prior drawn by the
generator seeded with (seed, k). FID uses the dataset's feature extractor against the whole
dataset's statistics (as ``evaluate.py``); with two or more ``--seeds`` the table gives the
mean and, as the noise level, half the spread between seeds. ``--out`` writes OUT.md, OUT.png
and OUT.json; with ``--merge`` they also keep OUT.json's rows this run did not redo, so a
table can be built over several invocations.
"""

from __future__ import annotations

import argparse
import inspect
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
from scorelab.models.prediction import Prediction  # noqa: E402
from scorelab.paths.sde import VESDE, VPSDE  # noqa: E402
from scorelab.sampling import steps_for_nfe  # noqa: E402
from scorelab.sampling.grids import is_grid_file  # noqa: E402

NFES = [4, 6, 8, 10, 15, 20]
SAMPLERS = ["ode:method=euler", "ode:method=heun", "edm", "dpm_solver:order=2",
            "dpm_solver:order=3", "unipc:order=2", "unipc:order=3",
            "unipc:order=2,grid=uniform,shift=3", "unipc:order=3,final=zero",
            "dpm_solver:order=2,grid=uniform,shift=3"]
PEERS = ["euler", "heun", "dpm2m", "unipc"]
KD_PEERS = ["euler", "heun", "lms", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde"]
PEER_LIBRARIES = ("diffusers", "k-diffusion")


def is_peer(name: str) -> bool:
    return name.startswith(PEER_LIBRARIES)


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
        """The most steps whose NFE is exactly ``budget`` (None: no step count hits it)."""
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


def kdiffusion_sampling():
    """k-diffusion's ``sampling`` module without running its package ``__init__``, or None
    when k-diffusion is not installed."""
    import importlib
    import importlib.util
    import types

    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")      # finds, does not import
    if spec is None:
        return None
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling")


def ve_denoiser(path, predict):
    """k-diffusion's D(x, sigma) from a scorelab prediction on ``path``: x = x_t / alpha_t is
    the VE-scaled state at sigma = sigma_t / alpha_t, so D(x, sigma) = x0_hat(alpha_t x, t)
    with t from the path's inverse of log(alpha / sigma) = -log sigma."""
    def denoise(x, sigma):
        t = path.t_from_log_snr(-sigma.to(torch.float64).log()).to(x.dtype)
        alpha = path.alpha_sigma(t)[0].reshape((-1,) + (1,) * (x.dim() - 1))
        return predict(alpha * x, t).x0
    return denoise


class KDiffusionPeer:
    """One of k-diffusion's samplers (``sample_<name>``) on the module's network (EMA)."""

    def __init__(self, name: str, module, sampling):
        self.name, self.module, self.path, self.K = name, module, module.model.path, sampling
        self.fn = getattr(sampling, f"sample_{name}", None)
        if self.fn is None:
            raise SystemExit(f"k-diffusion has no sampler sample_{name}; --kd-peers takes "
                             f"{', '.join(KD_PEERS)} or any other sample_* name")
        if not isinstance(self.path, (VPSDE, VESDE)):
            raise SystemExit(f"k-diffusion's samplers are compared on VP and VE SDEs, not on "
                             f"{type(self.path).__name__}: --kd-peers with no names")
        self.label = f"k-diffusion {name}[karras]"
        ends = torch.tensor([self.path.T, self.path.sampling_eps], dtype=torch.float64)
        alpha, sigma = self.path.alpha_sigma(ends)
        self.sigma_max, self.sigma_min = (sigma / alpha).tolist()
        self.alpha_T = float(alpha[0])
        self.stochastic = "noise_sampler" in inspect.signature(self.fn).parameters

    def run(self, predict, x, steps: int, generator) -> tuple[torch.Tensor, int]:
        sigmas = self.K.get_sigmas_karras(steps, self.sigma_min, self.sigma_max, rho=7.0)
        nfe = 0
        denoise = ve_denoiser(self.path, predict)

        def counted(x, sigma):
            nonlocal nfe
            nfe += 1
            return denoise(x, sigma)
        extra = {}
        if self.stochastic:
            extra["noise_sampler"] = lambda s, s_next: torch.randn(x.shape, generator=generator,
                                                                   dtype=x.dtype)
        out = self.fn(counted, x / self.alpha_T, sigmas, disable=True, **extra)
        return out, nfe

    def nfe(self, steps: int) -> int:
        path = self.path
        x = path.prior_sampling((1, 1), generator=torch.Generator().manual_seed(0))
        try:
            return self.run(lambda y, t: Prediction.from_x0(path, y, t, torch.zeros_like(y)),
                            x, steps, torch.Generator().manual_seed(0))[1]
        except UnboundLocalError:   # k-diffusion's SDE samplers fail on a one-step schedule
            return 0

    steps_for = Peer.steps_for

    @torch.no_grad()
    def draw(self, steps: int, n: int, generator) -> tuple[torch.Tensor, int]:
        x = self.path.prior_sampling((n,) + self.module.data_shape, generator=generator)
        return self.run(self.module.guided_prediction_fn(None), x, steps, generator)


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
                linestyle="--" if is_peer(name) else "-", label=name)
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
    p.add_argument("--kd-peers", nargs="*", default=None,
                   help="k-diffusion samplers on a VP / VE SDE (default: KD_PEERS when "
                        "k-diffusion is installed, none otherwise)")
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
    sampling = kdiffusion_sampling()
    kd_peers = args.kd_peers
    if kd_peers is None:
        kd_peers = KD_PEERS if sampling and isinstance(path, (VPSDE, VESDE)) else []
        if not kd_peers:
            print("k-diffusion's peers: " + ("not installed (pip install --no-deps "
                  "k-diffusion torchsde trampoline)" if sampling is None else
                  f"none on {type(path).__name__}"), flush=True)
    elif kd_peers and sampling is None:
        p.error("--kd-peers needs k-diffusion: pip install --no-deps k-diffusion torchsde "
                "trampoline")
    for name in kd_peers:
        peer = KDiffusionPeer(name, module, sampling)
        for budget in args.nfe:
            steps = peer.steps_for(budget)
            if steps is not None:
                runs.append((peer.label, budget, {"k-diffusion": name, "steps": steps,
                                                  "sigmas": "karras", "rho": 7.0},
                             lambda m, g, peer=peer, steps=steps: peer.draw(steps, m, g)))
    rows = fid_rows(loaded, runs, args.n, args.batch, args.seeds, extractor, reference)
    if args.merge and Path(f"{args.out}.json").exists():
        rows = merge(json.loads(Path(f"{args.out}.json").read_text()), rows)
    budgets = sorted({r["nfe_budget"] for r in rows})
    print(table(rows, budgets))
    for b in budgets:
        mine = [r for r in rows if r["nfe_budget"] == b]
        ours = min((r for r in mine if not is_peer(r["sampler"])),
                   key=lambda r: r["fid"], default=None)
        peer = min((r for r in mine if is_peer(r["sampler"])),
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
