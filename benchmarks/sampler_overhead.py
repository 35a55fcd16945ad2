"""Sampler overhead: wall time of each sampler divided by NFE x the time of one batched
forward of a real backbone (the compact UNet on 28x28). 1.00 means the sampler adds nothing
beyond its network evaluations.

    python benchmarks/sampler_overhead.py [--batch 64] [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from scorelab.models.heads import get_head  # noqa: E402
from scorelab.nets.unet import UNet  # noqa: E402
from scorelab.sampling import sample  # noqa: E402
from scorelab.models.score import ScoreModel  # noqa: E402
from scorelab.paths.sde import VESDE, VPSDE  # noqa: E402

SAMPLERS = {
    "pc euler-maruyama": ("pc", dict(predictor="euler_maruyama", denoise=False)),
    "pc reverse-diffusion": ("pc", dict(predictor="reverse_diffusion", denoise=False)),
    "pc ancestral": ("pc", dict(predictor="ancestral", denoise=False)),
    "pc rd + langevin": ("pc", dict(predictor="reverse_diffusion", corrector="langevin",
                                    denoise=False)),
    "ode euler": ("ode", dict(method="euler")),
    "ode heun": ("ode", dict(method="heun")),
    "ddim": ("ddim", dict()),
    "ddim eta=1": ("ddim", dict(eta=1.0)),
    "edm": ("edm", dict()),
    "dpm-solver++ 2M": ("dpm_solver", dict(order=2)),
    "dpm-solver++ 3M": ("dpm_solver", dict(order=3)),
}


def timed(fn, repeats):
    """Best of ``repeats`` (the least disturbed run on a shared machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--path", "--sde", default="vp", choices=["vp", "ve"])
    args = p.parse_args()
    torch.manual_seed(0)
    path = VPSDE() if args.path == "vp" else VESDE()
    net = UNet((1, 28, 28), channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
               attn_resolutions=(7,), dropout=0.0).eval()     # the compact `unet` preset
    for prm in net.parameters():                  # non-trivial output (the init zeroes it)
        prm.add_(0.01 * torch.randn_like(prm))
    model = ScoreModel(net, get_head("eps"), path)
    x = torch.randn(args.batch, 1, 28, 28)
    label = torch.rand(args.batch) * 999
    net(x, label)                                  # warm-up
    print(f"compact UNet, batch {args.batch}, {args.steps} steps, {args.path}; ratio = sampler "
          "wall time / (NFE x one forward), best of interleaved runs")
    print(f"{'sampler':22s} {'NFE':>5s} {'fwd ms':>7s} {'wall s':>8s} {'ratio':>6s}")
    score_fn = model.prediction_fn()
    for label_, (name, opts) in SAMPLERS.items():
        gen = torch.Generator().manual_seed(0)
        run = lambda: sample(score_fn, path, x.shape, name, steps=args.steps,  # noqa: E731
                             generator=gen, **opts)
        nfe = run().nfe
        forwards = lambda: [net(x, label) for _ in range(nfe)]  # noqa: E731
        base, wall = float("inf"), float("inf")
        for _ in range(args.repeats):               # interleaved, so drift hits both alike
            base = min(base, timed(forwards, 1))
            wall = min(wall, timed(run, 1))
        print(f"{label_:22s} {nfe:5d} {1e3 * base / nfe:7.1f} {wall:8.3f} {wall / base:6.3f}")


if __name__ == "__main__":
    main()
