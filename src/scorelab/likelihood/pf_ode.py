"""Log-likelihood through the probability-flow ODE (Song et al. 2021, Sec. 4.3 and App. D.2;
the instantaneous change of variables of Chen et al. 2018):

    log p_0(x) = log p_T(x(T)) + int_eps^T div v(x(t), t) dt,   v = f - 1/2 g^2 score,

v being the prediction's velocity alpha' x0_hat + sigma' eps_hat, so the same code gives the
likelihood of a flow-matching model (a path with alpha(T) = 0; its prior N(0, sigma(T)^2)).

integrated from x(eps) = x to T together with the divergence, by adaptive Dormand–Prince
(``solver``: torchdiffeq's dopri5 on the data's device, default, or scipy's RK45 on the host;
see ``scorelab.sampling.ode_solvers``).
The divergence is exact (trace of the Jacobian, one backward pass per dimension: low
dimension only) or Hutchinson–Skilling's unbiased estimate E_e[e^T (dv/dx) e] with
Rademacher or Gaussian probes e, fixed along the trajectory (``n_probes`` averaged).

``bits_per_dim`` turns this into the bits/dim of 8-bit images: uniform dequantisation
x = (k + u) / 256, the model sees 2x - 1 in [-1, 1], and the change of variables adds
log 2 per dimension and the 256 bins take 8 bits:
    bpd = -(log p_model(2x - 1) + D log 2) / (D log 2) + 8 = -log p_model / (D log 2) + 7,
the same offset Score SDE uses, so numbers compare with published ones.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from scorelab.util.checks import check_values, integer, number, one_of
from scorelab.models.prediction import as_prediction_fn
from scorelab.sampling.ode_solvers import SOLVERS, solve_ode, velocity_field

DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")
# Allowed values of log_likelihood's options (checked at every call, and by the bits/dim
# callback when it is configured).
RULES = {"divergence": one_of(DIVERGENCES, "divergence"), "n_probes": integer(1),
         "probe": one_of(PROBES, "probe"), "eps": number(0, lo_open=True),
         "rtol": number(0, lo_open=True), "atol": number(0, lo_open=True),
         "solver": one_of(SOLVERS, "solver")}


def check_likelihood_options(options: dict, prefix: str = "likelihood") -> None:
    """Names and values of ``log_likelihood`` options; ValueError naming the key."""
    unknown = sorted(set(options) - set(RULES))
    if unknown:
        raise ValueError(f"{prefix}: no option(s) {', '.join(unknown)}; the options are: "
                         f"{', '.join(RULES)}")
    check_values(prefix, options, RULES)


class LikelihoodResult(NamedTuple):
    logp: Tensor        # [B] log p_0(x) in nats
    nfe: int            # ODE right-hand-side evaluations
    prior: Tensor       # [B, ...] the latent x(T)


def _exact_divergence(drift, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = drift(x, t)
        flat_v, flat_x = v.flatten(1), x
        div = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for d in range(flat_v.shape[1]):
            (g,) = torch.autograd.grad(flat_v[:, d].sum(), flat_x, retain_graph=True)
            div = div + g.flatten(1)[:, d]
    return v.detach(), div


def _hutchinson_divergence(drift, x: Tensor, t: Tensor, probes: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = drift(x, t)
        div = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for k in range(probes.shape[0]):
            (g,) = torch.autograd.grad((v * probes[k]).sum(), x, retain_graph=k + 1 < len(probes))
            div = div + (g * probes[k]).flatten(1).sum(1)
    return v.detach(), div / probes.shape[0]


def draw_probes(x: Tensor, n_probes: int, probe: str, generator=None) -> Tensor:
    z = torch.randn((n_probes,) + tuple(x.shape), generator=generator, device=x.device,
                    dtype=x.dtype)
    return z.sign() if probe == "rademacher" else z


def log_likelihood(model, path, x: Tensor, divergence: str = "hutchinson",
                   n_probes: int = 1, probe: str = "rademacher", eps: float = 1e-5,
                   rtol: float = 1e-5, atol: float = 1e-5, solver: str = "torchdiffeq",
                   generator: torch.Generator | None = None) -> LikelihoodResult:
    """Per-sample log p(x) in nats under the model's probability-flow ODE.

    Args:
        model: differentiable ``model(x, t)`` returning a ``Prediction`` or a score.
        path: the forward path (an SDE or an interpolant).
        x: data in model space [B, ...].
        divergence: "hutchinson" (any dimension) or "exact" (low dimension).
        n_probes: Hutchinson probes averaged at every evaluation.
        probe: "rademacher" or "gaussian".
        eps: starting time of the ODE (Score SDE: 1e-5).
        rtol, atol: Dormand–Prince tolerances.
        solver: "torchdiffeq" (on x's device) or "scipy" (host).
        generator: for the probes.
    """
    check_likelihood_options(dict(divergence=divergence, n_probes=n_probes, probe=probe,
                                  eps=eps, rtol=rtol, atol=atol, solver=solver))
    drift = velocity_field(as_prediction_fn(model, path))
    batch, dims = x.shape[0], x[0].numel()
    probes = draw_probes(x, n_probes, probe, generator) if divergence == "hutchinson" else None

    def augmented(state: Tensor, t: Tensor) -> Tensor:
        xt = state[:, :dims].reshape(x.shape)
        if probes is None:
            v, div = _exact_divergence(drift, xt, t)
        else:
            v, div = _hutchinson_divergence(drift, xt, t, probes)
        return torch.cat([v.flatten(1), div[:, None]], dim=1)

    state = torch.cat([x.flatten(1), torch.zeros(batch, 1, device=x.device, dtype=x.dtype)], 1)
    end, nfe = solve_ode(augmented, state, eps, path.T, rtol, atol, solver)
    z = end[:, :dims].reshape(x.shape)
    return LikelihoodResult(path.prior_logp(z) + end[:, dims], nfe, z)


def bits_per_dim(model, path, images: Tensor, n_bits: int = 8, dequantize: bool = True,
                 generator: torch.Generator | None = None, **kwargs) -> tuple[Tensor, int]:
    """Per-sample bits/dim of images with values k / (2^n_bits - 1) in [0, 1] (e.g. a
    torchvision ``ToTensor`` output), through ``log_likelihood`` (``kwargs``)."""
    bins = 2 ** n_bits
    if dequantize:
        k = torch.round(images * (bins - 1))
        u = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        unit = (k + u) / bins
    else:
        unit = images
    res = log_likelihood(model, path, 2 * unit - 1, generator=generator, **kwargs)
    dims = images[0].numel()
    bpd = -(res.logp + dims * math.log(2)) / (dims * math.log(2)) + n_bits
    return bpd, res.nfe
