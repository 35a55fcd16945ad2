"""Noise-rate schedules beta(t) for the VP family, with their integrals B(t) = int_0^t beta.

* linear (DDPM; Score SDE Eq. 11 with beta(t) = b0 + t (b1 - b0)):
      B(t) = b0 t + (b1 - b0) t^2 / 2,   discrete betas linspace(b0/N, b1/N, N).
* cosine (Nichol & Dhariwal 2021, Eq. 17): alpha_bar(u) = cos^2(phi(u)) / cos^2(phi(0)),
      phi(u) = (u + s) / (1 + s) * pi / 2,   B = -log alpha_bar,   beta = dB/dt.
  alpha_bar reaches 0 at u = 1 where beta is infinite, so continuous time t in [0, 1] is
  mapped to u = t * u_max with alpha_bar(u_max) = ``alpha_bar_min`` (1e-4 by default: a
  terminal log-SNR of -9.2, close to the linear schedule's -10). Discrete betas are
  1 - alpha_bar(t_{i+1}) / alpha_bar(t_i), clipped at 0.999 as in improved DDPM.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor


class BetaSchedule(abc.ABC):
    @abc.abstractmethod
    def beta(self, t: Tensor) -> Tensor:
        """beta(t)."""

    @abc.abstractmethod
    def integral(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta(s) ds."""

    def discrete_betas(self, N: int) -> Tensor:
        t = torch.linspace(0.0, 1.0, N + 1, dtype=torch.float64)
        B = self.integral(t)
        return (-torch.expm1(-(B[1:] - B[:-1]))).clamp(max=0.999).float()


class LinearBetaSchedule(BetaSchedule):
    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"linear schedule needs 0 <= beta_min < beta_max, "
                             f"got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def discrete_betas(self, N):
        # DDPM's own discretisation (beta_i = beta(t_i) / N), not the integral's.
        return torch.linspace(self.beta_min / N, self.beta_max / N, N, dtype=torch.float64).float()


class CosineBetaSchedule(BetaSchedule):
    def __init__(self, s: float = 0.008, alpha_bar_min: float = 1e-4):
        self.s = float(s)
        self._phi0 = self.s / (1 + self.s) * math.pi / 2
        cos_end = math.sqrt(alpha_bar_min) * math.cos(self._phi0)
        self.u_max = math.acos(cos_end) * 2 * (1 + self.s) / math.pi - self.s

    def _phi(self, t):
        return (t * self.u_max + self.s) / (1 + self.s) * math.pi / 2

    def integral(self, t):
        # B(0) = 0 exactly in theory, but log cos phi(0) - log cos phi0 rounds to about
        # -1e-8 in float32; a negative B makes sqrt(1 - exp(-2B)) (sub-VP's g) NaN at t = 0.
        B = -2.0 * (torch.log(torch.cos(self._phi(t))) - math.log(math.cos(self._phi0)))
        return B.clamp(min=0.0)

    def beta(self, t):
        # d/dt [-2 log cos phi] = 2 tan(phi) dphi/dt
        return 2.0 * torch.tan(self._phi(t)) * (self.u_max / (1 + self.s) * math.pi / 2)


def make_beta_schedule(name: str, beta_min: float = 0.1, beta_max: float = 20.0,
                       s: float = 0.008) -> BetaSchedule:
    if name == "linear":
        return LinearBetaSchedule(beta_min, beta_max)
    if name == "cosine":
        return CosineBetaSchedule(s)
    raise ValueError(f"unknown beta schedule {name!r}; known: linear, cosine")
