"""Interpolant paths of flow matching, on the same interface as the Score SDEs.

A path is x_t = alpha(t) x0 + sigma(t) eps, t = 0 (data) to t = T = 1 (noise), given by
alpha, sigma and their time derivatives. Everything else follows generically:

* the SDE with these marginals:  f = alpha' / alpha,  g^2 = 2 sigma sigma' - 2 f sigma^2
  (d sigma^2/dt = 2 f sigma^2 + g^2); both are infinite at T, where alpha(T) = 0, so the
  samplers work there with the prediction (x0_hat, eps_hat, velocity), never with f and g;
* the flow velocity  dx_t/dt = alpha' x0 + sigma' eps, the flow-matching target;
* the log-SNR lambda = log(alpha / sigma) (-inf at T) and its inverse.

Paths:

* ``LinearPath``  (rectified flow, Liu et al. 2023; conditional OT, Lipman et al. 2023):
  alpha = 1 - t, sigma = t; velocity = eps - x0; f = -1 / (1 - t), g^2 = 2 t / (1 - t).
* ``CosinePath``  (Albergo & Vanden-Eijnden 2023; SiT's GVP): alpha = cos(pi t / 2),
  sigma = sin(pi t / 2); f = -pi/2 tan(pi t / 2), g^2 = pi tan(pi t / 2).

Time convention: scorelab's t = 0 is data and t = 1 noise. flow_matching and SiT run t the
other way (t' = 1 - t, velocity' = -velocity); diffusers' flow-matching schedulers use
sigma = t, as here. Conversions to those conventions happen only at the edges (importers,
never inside a sampler).
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from scorelab.paths.sde import ForwardPath, batch_broadcast


class InterpolantPath(ForwardPath):
    """A path given by alpha(t), sigma(t) and their derivatives; the prior is N(0, sigma(T)^2)."""

    @abc.abstractmethod
    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha'(t), sigma'(t))."""

    def drift_diffusion(self, x, t):
        alpha, sigma = self.alpha_sigma(t)
        d_alpha, d_sigma = self.derivatives(t)
        f = d_alpha / alpha
        g2 = 2 * sigma * d_sigma - 2 * f * sigma * sigma
        return batch_broadcast(f, x) * x, torch.sqrt(g2.clamp(min=0))

    def prior_std(self):
        return float(self.alpha_sigma(torch.tensor([self.T], dtype=torch.float64))[1])


class LinearPath(InterpolantPath):
    """alpha = 1 - t, sigma = t (rectified flow / conditional optimal transport).

    Args:
        N: discretisation used for the backbone's time label (N - 1) t and the discrete
            transition chain.
        sampling_eps: smallest time the samplers integrate to.
    """

    def __init__(self, N: int = 1000, sampling_eps: float = 1e-3):
        super().__init__(N=N, sampling_eps=sampling_eps)

    def alpha_sigma(self, t):
        return 1.0 - t, t.clone()

    def derivatives(self, t):
        return -torch.ones_like(t), torch.ones_like(t)

    def log_snr(self, t):
        return torch.log1p(-t) - torch.log(t)

    def t_from_log_snr(self, lam, iters: int = 64):
        return torch.sigmoid(-lam.double())


class CosinePath(InterpolantPath):
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2) (variance preserving; SiT's GVP).

    Args:
        N, sampling_eps: as for ``LinearPath``.
    """

    def __init__(self, N: int = 1000, sampling_eps: float = 1e-3):
        super().__init__(N=N, sampling_eps=sampling_eps)

    def alpha_sigma(self, t):
        angle = 0.5 * math.pi * t
        # cos(pi/2) rounds to -4e-8 in float32: alpha is exactly 0 at T, never negative.
        alpha = torch.where(t >= self.T, torch.zeros_like(t), torch.cos(angle).clamp(min=0))
        return alpha, torch.sin(angle)

    def derivatives(self, t):
        angle = 0.5 * math.pi * t
        return -0.5 * math.pi * torch.sin(angle), 0.5 * math.pi * torch.cos(angle).clamp(min=0)

    def log_snr(self, t):
        alpha, sigma = self.alpha_sigma(t)
        return torch.log(alpha) - torch.log(sigma)

    def t_from_log_snr(self, lam, iters: int = 64):
        return torch.atan(torch.exp(-lam.double())) * (2 / math.pi)
