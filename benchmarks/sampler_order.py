"""Convergence order of every sampler against the exact answer, with the exact GMM score.

Deterministic solvers: endpoint error E|x_n - x_ref| against a tight-tolerance RK45 solution
of the probability-flow ODE from the same prior sample. Stochastic samplers: weak error
|E|x|^2 - E_exact|x|^2| of the second moment at the final time (exact from the mixture).
The fitted order is minus the slope of log(error) against log(NFE); a PNG plots error vs NFE.

    python benchmarks/sampler_order.py [--path vp|subvp|ve] [--out sampler_order.png]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from scorelab.models.mixture import GaussianMixture  # noqa: E402
from scorelab.sampling import sample  # noqa: E402
from scorelab.paths.sde import SubVPSDE, VESDE, VPSDE  # noqa: E402

DETERMINISTIC = {
    "ode euler": ("ode", dict(method="euler")),
    "ode heun": ("ode", dict(method="heun")),
    "ddim (eta 0)": ("ddim", dict()),
    "edm heun": ("edm", dict()),
    "dpm-solver++ 1": ("dpm_solver", dict(order=1, lower_order_final=False)),
    "dpm-solver++ 2M": ("dpm_solver", dict(order=2, lower_order_final=False)),
    "dpm-solver++ 3M": ("dpm_solver", dict(order=3, lower_order_final=False)),
}
STOCHASTIC = {
    "pc euler-maruyama": ("pc", dict(predictor="euler_maruyama", denoise=False)),
    "pc reverse diffusion": ("pc", dict(predictor="reverse_diffusion", denoise=False)),
    "pc ancestral": ("pc", dict(predictor="ancestral", denoise=False)),
    "ddim (eta 1)": ("ddim", dict(eta=1.0)),
}


def fitted_order(nfes, errors):
    x = torch.log(torch.tensor(nfes, dtype=torch.float64))
    y = torch.log(torch.tensor(errors, dtype=torch.float64))
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    return -slope.item()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", "--sde", default="vp", choices=["vp", "subvp", "ve"])
    p.add_argument("--n", type=int, default=2000, help="samples (deterministic solvers)")
    p.add_argument("--n-weak", type=int, default=200000, help="samples (weak errors)")
    p.add_argument("--out", default="sampler_order.png")
    args = p.parse_args()
    torch.set_default_dtype(torch.float64)        # errors far below float32 round-off
    path = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(sigma_max=5.0)}[args.path]
    eps = 1e-2                                       # keep the exact score smooth enough
    gmm = GaussianMixture.ring(2, 4, radius=1.0, std=0.3)
    gmm.means, gmm.stds, gmm.weights = gmm.means.double(), gmm.stds.double(), gmm.weights.double()
    score = gmm.score_fn(path)
    x_init = path.prior_sampling((args.n, 2), generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64)
    ref = sample(score, path, None, "ode", steps=1, x_init=x_init, eps=eps,
                 method="rk45", rtol=1e-10, atol=1e-10).x
    curves = {}
    print(f"sde={args.path}: deterministic solvers, endpoint error vs a tight RK45 solution")
    for label, (name, opts) in DETERMINISTIC.items():
        nfes, errs = [], []
        for steps in (4, 8, 16, 32, 64, 128):
            res = sample(score, path, None, name, steps=steps, x_init=x_init, eps=eps, **opts)
            nfes.append(res.nfe)
            errs.append((res.x - ref).norm(dim=1).mean().item())
        curves[label] = (nfes, errs)
        print(f"  {label:20s} order {fitted_order(nfes[2:], errs[2:]):5.2f}   "
              + "  ".join(f"{n}:{e:.1e}" for n, e in zip(nfes, errs)))
    alpha, sigma = path.alpha_sigma(torch.tensor([eps]))
    exact_m2 = (gmm.weights * (alpha ** 2 * ((gmm.means ** 2).sum(1) + (gmm.stds ** 2).sum(1))
                               + 2 * sigma ** 2)).sum().item()
    noise = 2 * math.sqrt(2 * exact_m2 ** 2 / args.n_weak)
    print(f"stochastic samplers, weak error of E|x|^2 (Monte Carlo noise ~ {noise:.1e}; "
          "the order is fitted where the error is above 3x the noise)")
    for label, (name, opts) in STOCHASTIC.items():
        nfes, errs = [], []
        for steps in (8, 16, 32, 64, 128):
            res = sample(score, path, (args.n_weak, 2), name, steps=steps, eps=eps,
                         generator=torch.Generator().manual_seed(steps), **opts)
            nfes.append(res.nfe)
            errs.append(abs((res.x ** 2).sum(1).mean().item() - exact_m2))
        curves[label] = (nfes, errs)
        keep = [i for i, e in enumerate(errs) if e > 3 * noise]
        order = fitted_order([nfes[i] for i in keep], [errs[i] for i in keep]) \
            if len(keep) >= 2 else float("nan")
        print(f"  {label:20s} order {order:5.2f}   "
              + "  ".join(f"{n}:{e:.1e}" for n, e in zip(nfes, errs)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for label, (nfes, errs) in curves.items():
        ax.loglog(nfes, errs, "o-" if label in DETERMINISTIC else "s--", label=label, ms=3)
    ax.set_xlabel("NFE")
    ax.set_ylabel("error (endpoint / weak second moment)")
    ax.set_title(f"sampler convergence on the exact GMM score ({args.path})")
    ax.legend(fontsize=7)
    fig.savefig(args.out, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
