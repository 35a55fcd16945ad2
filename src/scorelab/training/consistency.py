"""Consistency models (Song et al. 2023): training, distillation and ECT fine-tuning.

The model's predictions are read through the boundary-respecting consistency function f
(``models.consistency.Boundary``). Each loss compares f at a higher noise level with the
stop-gradient f at a lower one on the same trajectory, in EDM's units (x_t = alpha (x0 +
s z), s = sigma / alpha, t(s) from the path's log-SNR):

    L = lambda(s, s') d(f(x_s, s), sg(f(x_s', s'))),  lambda = 1 / (s - s'),
    d(a, b) = sqrt(||a - b||^2 + c^2) - c,  c = 0.00054 sqrt(dim)   (pseudo-Huber, iCT),

with x_s' from

* ``training`` (Improved CT, Song & Dhariwal 2023): the same noise, x_s' = alpha'(x0 + s' z),
  on Karras' rho = 7 levels sigma_min .. sigma_max, N(k) = min(s0 2^floor(k / K'), s1) + 1
  of them at step k of K (K' = floor(K / (log2 floor(s1 / s0) + 1))), the pair (s_i, s_i+1)
  drawn with p(i) ~ erf((ln s_i+1 - P_mean) / (sqrt 2 P_std)) - erf((ln s_i - P_mean) /
  (sqrt 2 P_std)) (their Sec. 3.5: -1.1, 2.0);
* ``distillation`` (CD, Song et al. 2023, Alg. 2): one Heun step of a teacher's probability-
  flow ODE from x_s down to s', on ``steps`` fixed Karras levels (their N = 18);
* ``ect`` (Geng et al. 2024, "Consistency Models Made Easy"): continuous s ~ log-normal, s' =
  s (1 - q^-a n(s)), n(s) = 1 + k sigmoid(-b s), a = ceil(stages k / K) the stage; s' <= 0
  (stage 0) is the data itself, so ECT starts as denoising and shrinks s - s' stage by stage.
  Meant to fine-tune a trained diffusion or flow model (ckpt_mode=finetune), which the
  boundary parameterisation starts as a consistency model of itself.

Each step's progress k / K comes from the training loop (``at_step``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scorelab.models.consistency import Boundary
from scorelab.models.score import ScoreModel
from scorelab.paths.sde import ForwardPath, batch_broadcast
from scorelab.training.losses import IncompatibleError
from scorelab.util.checks import check_values, integer, number, one_of

MODES = ("training", "distillation", "ect")
TEACHER_SOLVERS = ("heun", "euler")


def karras_levels(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """n noise levels sigma_min = s_0 < ... < s_{n-1} = sigma_max, rho-spaced (EDM Eq. 5),
    float64."""
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (lo + u * (hi - lo)) ** rho


class ConsistencyLoss:
    """Args:
        mode: "training" (iCT), "distillation" (CD, needs ``teacher``) or "ect".
        sigma_min, sigma_data: the consistency function's boundary (``Boundary``).
        sigma_max: the highest level trained (capped at the path's level at T).
        rho: Karras' level spacing.
        p_mean, p_std: the log-normal of the noise levels (iCT, ECT: -1.1, 2.0).
        s0, s1: iCT's discretisation curriculum, from s0 + 1 to s1 + 1 levels.
        steps: the fixed number of levels of distillation (N = 18).
        huber_c: the pseudo-Huber c (None: 0.00054 sqrt(dim), iCT's).
        teacher: the teacher checkpoint (distillation): any scorelab diffusion or flow model
            of the same data; its EMA weights give the ODE step.
        teacher_solver: "heun" or "euler".
        ect_q, ect_k, ect_b, ect_stages: ECT's shrink factor q, n(s)'s k and b, the stages.
    """

    decoder_bins = None       # (no bound term)

    def __init__(self, mode: str = "training", sigma_min: float = 0.002,
                 sigma_max: float = 80.0, sigma_data: float = 0.5, rho: float = 7.0,
                 p_mean: float = -1.1, p_std: float = 2.0, s0: int = 10, s1: int = 1280,
                 steps: int = 18, huber_c: float | None = None, teacher: str | None = None,
                 teacher_solver: str = "heun", ect_q: float = 2.0, ect_k: float = 8.0,
                 ect_b: float = 1.0, ect_stages: int = 8):
        check_values("loss", dict(mode=mode, sigma_max=sigma_max, rho=rho, p_mean=p_mean,
                                  p_std=p_std, s0=s0, s1=s1, steps=steps,
                                  teacher_solver=teacher_solver, ect_q=ect_q, ect_k=ect_k,
                                  ect_b=ect_b, ect_stages=ect_stages),
                     {"mode": one_of(MODES, "consistency mode"),
                      "sigma_max": number(0, lo_open=True), "rho": number(0, lo_open=True),
                      "p_mean": number(), "p_std": number(0, lo_open=True),
                      "s0": integer(1), "s1": integer(1), "steps": integer(2),
                      "teacher_solver": one_of(TEACHER_SOLVERS, "teacher solver"),
                      "ect_q": number(1, lo_open=True), "ect_k": number(0),
                      "ect_b": number(0), "ect_stages": integer(1)})
        if huber_c is not None:
            check_values("loss", {"huber_c": huber_c}, {"huber_c": number(0, lo_open=True)})
        self.boundary = Boundary(sigma_min, sigma_data)
        if sigma_max <= sigma_min:
            raise ValueError(f"loss.sigma_max={sigma_max} must be above loss.sigma_min="
                             f"{sigma_min}")
        if s1 < s0:
            raise ValueError(f"loss.s1={s1} must be >= loss.s0={s0} (the curriculum grows)")
        if mode == "distillation" and not teacher:
            raise ValueError("loss.mode=distillation needs loss.teacher=<checkpoint>")
        if mode != "distillation" and teacher:
            raise ValueError(f"loss.teacher is for mode=distillation, not mode={mode}")
        self.mode, self.sigma_max, self.rho = mode, float(sigma_max), float(rho)
        self.p_mean, self.p_std, self.s0, self.s1 = float(p_mean), float(p_std), int(s0), int(s1)
        self.steps, self.huber_c = int(steps), huber_c
        self.teacher_ckpt, self.teacher_solver = teacher, teacher_solver
        self.teacher = None               # the teacher's ScoreModel (set_teacher)
        self.teacher_conditional = False
        self.ect_q, self.ect_k, self.ect_b = float(ect_q), float(ect_k), float(ect_b)
        self.ect_stages = int(ect_stages)
        self.step, self.total = 0, 1

    # -- set-up -------------------------------------------------------------------------
    def check(self, path: ForwardPath, head=None) -> None:
        """The levels [sigma_min, sigma_max] must be levels of the path."""
        ends = torch.tensor([0.0, float(path.T)], dtype=torch.float64)
        alpha, sigma = path.alpha_sigma(ends)
        low = float(sigma[0] / alpha[0])
        if low > self.boundary.sigma_min:
            raise IncompatibleError(
                f"loss.sigma_min={self.boundary.sigma_min} is below {type(path).__name__}'s "
                f"smallest noise level {low:.3g} (sigma / alpha at t = 0): raise "
                f"loss.sigma_min or lower the path's")

    def check_model(self, model: ScoreModel) -> None:
        pass

    def top(self, path: ForwardPath) -> float:
        """The highest level trained: sigma_max, or the path's level at T if lower."""
        alpha, sigma = path.alpha_sigma(torch.tensor([float(path.T)], dtype=torch.float64))
        return min(self.sigma_max, float(sigma[0] / alpha[0]))

    def set_teacher(self, teacher: ScoreModel, conditional: bool = False) -> None:
        """The teacher's model (distillation): frozen, in eval mode; ``conditional``: it
        takes the batch's labels."""
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher, self.teacher_conditional = teacher, bool(conditional)

    def at_step(self, step: int, total: int) -> None:
        """The training loop's progress: step k of K (iCT's curriculum, ECT's stages)."""
        self.step, self.total = int(step), max(1, int(total))

    # -- the curriculum -------------------------------------------------------------------
    def levels_now(self) -> int:
        """iCT's N(k) at the current step; distillation's fixed ``steps``."""
        if self.mode == "distillation":
            return self.steps
        k_prime = max(1, math.floor(self.total / (math.log2(self.s1 // self.s0) + 1)))
        return min(self.s0 * 2 ** (self.step // k_prime), self.s1) + 1

    def draw_pairs(self, path, n: int, device, generator) -> tuple[Tensor, Tensor]:
        """(s, s') [n] float64, s > s' (s' = 0: the data)."""
        top = self.top(path)
        if self.mode == "ect":
            u = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
            s = (u * self.p_std + self.p_mean).exp().clamp(self.boundary.sigma_min, top)
            stage = math.ceil(self.ect_stages * self.step / self.total)
            shrink = self.ect_q ** (-stage) * (1 + self.ect_k * torch.sigmoid(-self.ect_b * s))
            return s, (s * (1 - shrink)).clamp(min=0)
        levels = karras_levels(self.levels_now(), self.boundary.sigma_min, top, self.rho)
        cdf = torch.erf((levels.log() - self.p_mean) / (math.sqrt(2) * self.p_std))
        weights = (cdf[1:] - cdf[:-1]).clamp(min=0)
        if self.mode == "distillation" or float(weights.sum()) == 0:
            weights = torch.ones_like(weights)
        # inverse CDF of the pair weights with u from the loss's generator on its device (a
        # validation pass draws the same pairs every time, on a GPU too)
        cdf = (weights.cumsum(0) / weights.sum()).to(device)
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        i = torch.searchsorted(cdf, u, right=True).clamp(max=len(weights) - 1)
        levels = levels.to(device)
        return levels[i + 1], levels[i]

    # -- the loss ---------------------------------------------------------------------------
    def __call__(self, model: ScoreModel, x0: Tensor, y: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        path = model.path
        s, s_lo = self.draw_pairs(path, x0.shape[0], x0.device, generator)
        t = path.t_from_log_snr(-s.log()).to(x0.device, torch.float32)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        y_hi = x0 + batch_broadcast(s, x0).to(x0.dtype) * noise
        f = model.prediction(self.at_level(path, y_hi, t), t, y).x0
        with torch.no_grad():
            target = self.target(model, x0, noise, y_hi, s, s_lo, y)
        diff = (f - target).flatten(1)
        c = self.huber_c if self.huber_c is not None else 0.00054 * math.sqrt(diff.shape[1])
        dist = (diff.pow(2).sum(1) + c * c).sqrt() - c
        weight = (1.0 / (s - s_lo)).to(x0.dtype)
        return (weight * dist).mean()

    @staticmethod
    def at_level(path, y: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha(t) y for y = x0 + s z at the level of t."""
        return batch_broadcast(path.alpha_sigma(t)[0], y).to(y.dtype) * y

    def target(self, model, x0, noise, y_hi, s, s_lo, y):
        """sg(f(x_s', s')): the data where s' = 0 (ECT's first stage), f at the lower level
        of the same noise (training, ECT) or after the teacher's step from y_hi = x0 + s z
        (distillation; a student loaded from its checkpoint has no teacher, and its
        validation loss, in evaluate.py, is the same-noise one, CT's estimate)."""
        path = model.path
        data = s_lo <= 0
        safe = torch.where(data, torch.full_like(s_lo, self.boundary.sigma_min), s_lo)
        t_lo = path.t_from_log_snr(-safe.log()).to(x0.device, torch.float32)
        if self.mode == "distillation" and self.teacher is not None:
            y_lo = self.teacher_step(y_hi, s, safe, y)
        else:
            y_lo = x0 + batch_broadcast(safe, x0).to(x0.dtype) * noise
        f_lo = model.prediction(self.at_level(path, y_lo, t_lo), t_lo, y).x0
        return torch.where(batch_broadcast(data, x0), x0, f_lo)

    def teacher_denoiser(self, y_: Tensor, s: Tensor, labels) -> Tensor:
        """The teacher's D(y; s) on its own path (x = alpha' y at t'(s))."""
        path = self.teacher.path
        t = path.t_from_log_snr(-s.log()).to(y_.device, torch.float32)
        return self.teacher.prediction(self.at_level(path, y_, t), t,
                                       labels if self.teacher_conditional else None).x0

    def teacher_step(self, y_: Tensor, s: Tensor, s_lo: Tensor, labels) -> Tensor:
        """One Euler or Heun step of EDM's ODE dy/ds = (y - D(y; s)) / s from s to s_lo
        (Karras et al. 2022, Alg. 1) with the teacher's denoiser."""
        self.teacher.to(y_.device)
        h = batch_broadcast(s_lo - s, y_).to(y_.dtype)
        d1 = (y_ - self.teacher_denoiser(y_, s, labels)) / batch_broadcast(s, y_).to(y_.dtype)
        euler = y_ + h * d1
        if self.teacher_solver == "euler":
            return euler
        d2 = (euler - self.teacher_denoiser(euler, s_lo, labels)) / \
            batch_broadcast(s_lo, y_).to(y_.dtype)
        return y_ + h * (d1 + d2) / 2

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, path: ForwardPath) -> None:
        pass
