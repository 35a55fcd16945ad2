"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"): a network
u_theta(z, r, t) for the average velocity over [r, t] of the flow dz/dt = v(z, t),

    u(z_t, r, t) = 1 / (t - r) int_r^t v(z_tau, tau) d tau,     z_r = z_t - (t - r) u,

so one evaluation jumps from the prior at t = T to the data at r = 0. Differentiating
(t - r) u = int_r^t v in t gives the MeanFlow identity (their Eq. 6)

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),
    d/dt u = v . grad_z u + d_t u        (a JVP with tangents (v, 0, 1) for (z, r, t)),

which the loss regresses on with the conditional velocity v = alpha' x0 + sigma' eps in place
of v (their Eq. 10) and the target stop-gradient:

    u_tgt = v - (t - r) sg(JVP),   L = sg(w) || u_theta - u_tgt ||^2,
    w = 1 / (|| u_theta - u_tgt ||^2 + c)^p     (adaptive weighting, their Sec. 4.3; p = 1),

the squared norm summed over the dimensions (with p = 0, the velocity head's squared error
summed, not averaged). At r = t the target is v and the loss is flow matching's, so a
MeanFlow model read at r = t is an ordinary flow model that every sampler runs. A fixed
fraction ``ratio`` of each batch draws r < t (the rest r = t; the paper's 25 %); (t, r) are
the order statistics of two logit-normal draws (their -0.4, 1.0). The JVP is only evaluated
on the r < t part. It runs with the math attention backend: PyTorch's flash and
memory-efficient kernels have no forward-mode derivative.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from scorelab.models.score import ScoreModel
from scorelab.paths.interpolants import InterpolantPath
from scorelab.paths.sde import ForwardPath, batch_broadcast
from scorelab.training.losses import IncompatibleError
from scorelab.util.checks import check_values, number, one_of

TIME_SAMPLINGS = ("logit_normal", "uniform")


class MeanFlowLoss:
    """Args:
        ratio: fraction of each batch with r < t (the others r = t: flow matching).
        time_sampling: "logit_normal" (logit t ~ N(p_mean, p_std^2)) or "uniform", for both
            draws; t is the larger, r the smaller.
        p_mean, p_std: the logit-normal's mean and std (ImageNet: -0.4, 1.0; CIFAR-10:
            -2.0, 2.0 with ratio 0.75, p 0.75).
        norm_p: the adaptive weight's power p (0: plain squared error).
        norm_eps: its c.
        eps: smallest time drawn.
    """

    decoder_bins = None       # (the bound's decoder: this loss has no bound term)

    def __init__(self, ratio: float = 0.25, time_sampling: str = "logit_normal",
                 p_mean: float = -0.4, p_std: float = 1.0, norm_p: float = 1.0,
                 norm_eps: float = 1e-3, eps: float = 1e-5):
        check_values("loss", dict(ratio=ratio, time_sampling=time_sampling, p_mean=p_mean,
                                  p_std=p_std, norm_p=norm_p, norm_eps=norm_eps, eps=eps),
                     {"ratio": number(0, 1), "time_sampling": one_of(TIME_SAMPLINGS,
                                                                     "time sampling"),
                      "p_mean": number(), "p_std": number(0, lo_open=True),
                      "norm_p": number(0), "norm_eps": number(0, lo_open=True),
                      "eps": number(0, 1, hi_open=True)})
        self.ratio, self.time_sampling = float(ratio), time_sampling
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.norm_p, self.norm_eps, self.eps = float(norm_p), float(norm_eps), float(eps)

    def check(self, path: ForwardPath, head=None) -> None:
        """MeanFlow's jump z_r = z_t - (t - r) u needs a velocity with finite alpha',
        sigma' everywhere (an interpolant path) and a head whose output is the velocity."""
        if not isinstance(path, InterpolantPath):
            raise IncompatibleError(
                f"MeanFlow averages the flow velocity, which {type(path).__name__} has "
                f"infinite at an end: it needs an interpolant path (path=linear, as the paper, "
                f"or path=cosine)")
        if head is not None and head.name != "velocity":
            raise IncompatibleError(
                f"MeanFlow's network outputs the average velocity u(z, r, t): it needs "
                f"head=velocity, not the {head.name} head")

    def check_model(self, model: ScoreModel) -> None:
        if not model.takes_interval:
            raise IncompatibleError("MeanFlow's network takes two times (r, t): set "
                                    "backbone.interval=true")

    def draw(self, n: int, device, generator, dtype=torch.float32) -> tuple[Tensor, Tensor]:
        """(t, r) [n]: the first round(ratio n) with r < t, the rest r = t."""
        if self.time_sampling == "uniform":
            a = torch.rand(2, n, generator=generator, device=device, dtype=dtype)
        else:
            u = torch.randn(2, n, generator=generator, device=device, dtype=dtype)
            a = torch.sigmoid(u * self.p_std + self.p_mean)
        a = self.eps + (1 - self.eps) * a
        t, r = a.max(0).values, a.min(0).values
        k = self.split(n)
        return t, torch.cat([r[:k], t[k:]])

    def split(self, n: int) -> int:
        """How many of n examples get r < t."""
        return int(round(self.ratio * n))

    def __call__(self, model: ScoreModel, x0: Tensor, y: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        tdtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
        n = x0.shape[0]
        t, r = self.draw(n, x0.device, generator, tdtype)
        path = model.path
        alpha, sigma = path.alpha_sigma(t)
        d_alpha, d_sigma = path.derivatives(t)
        c = tuple(batch_broadcast(v, x0).to(x0.dtype) for v in (alpha, sigma, d_alpha, d_sigma))
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        z = path.interpolate(x0, noise, c)
        v = c[2] * x0 + c[3] * noise
        k = self.split(n)
        parts, targets = [], []
        if k > 0:
            u, dudt = self.average_velocity_jvp(model, z[:k], r[:k], t[:k], v[:k],
                                                None if y is None else y[:k])
            gap = batch_broadcast(t[:k] - r[:k], u).to(u.dtype)
            parts.append(u)
            targets.append((v[:k] - gap * dudt).detach())
        if k < n:
            yk = None if y is None else y[k:]
            parts.append(model.outputs(z[k:], t[k:], yk, tuple(ci[k:] for ci in c))[0])
            targets.append(v[k:])
        err = (torch.cat(parts) - torch.cat(targets)).flatten(1)
        sq = (err * err).sum(1)            # ||err||^2 over the dimensions, as the paper's
        if self.norm_p > 0:
            sq = sq / (sq.detach() + self.norm_eps) ** self.norm_p
        return sq.mean()

    @staticmethod
    def average_velocity_jvp(model: ScoreModel, z: Tensor, r: Tensor, t: Tensor, v: Tensor,
                             y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """u_theta(z, r, t) and its total derivative d/dt u = v . grad_z u + d_t u (the
        JVP with tangents (v, 0, 1)), through the network's time embedding and the path's
        input scaling alike. The primal keeps its graph (the loss trains through it)."""
        def u_of(z_, r_, t_):
            return model.outputs(z_, t_, y, None, r_)[0]

        with sdpa_kernel(SDPBackend.MATH):
            return torch.func.jvp(u_of, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, path: ForwardPath) -> None:
        pass
