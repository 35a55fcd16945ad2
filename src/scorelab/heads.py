"""Prediction heads: what the backbone's raw output means, and how to turn it into a score.

With x = alpha x0 + sigma eps (any of the SDEs; alpha, sigma broadcastable to x):

    eps   head: eps_hat = out;  x0_hat = (x - sigma out) / alpha
    x0    head: x0_hat  = out;  eps_hat = (x - alpha out) / sigma
    v     head (Salimans & Ho 2022, v = alpha eps - sigma x0):
                x0_hat  = (alpha x - sigma v) / (alpha^2 + sigma^2)
                eps_hat = (sigma x + alpha v) / (alpha^2 + sigma^2)
    score head: s_hat = out;    eps_hat = -sigma out;   x0_hat = (x + sigma^2 out) / alpha

and for every head the score is s = -eps_hat / sigma (Tweedie; Vincent 2011). The v
formulas hold for any alpha, sigma (VE included), not only alpha^2 + sigma^2 = 1.

``loss_scale`` is the factor applied to (out - target) in the unweighted loss: 1 for the
eps and x0 heads (plain MSE in the head's own space); 1 / sqrt(alpha^2 + sigma^2) for the v
head, which is 1 on VP and keeps the target at unit variance on VE, where |v| grows like
sigma; sigma for the score head, which gives Score SDE's default lambda(t) = sigma^2 — an
unscaled score MSE would be dominated by t -> 0 where the target grows like 1 / sigma.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor


class Head(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    def target(self, x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The training target of the raw output at x = alpha x0 + sigma noise."""

    @abc.abstractmethod
    def to_eps(self, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The noise estimate implied by raw output ``out`` at x."""

    @abc.abstractmethod
    def to_x0(self, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The clean-data estimate implied by raw output ``out`` at x."""

    def to_score(self, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        return -self.to_eps(out, x, alpha, sigma) / sigma

    def loss_scale(self, alpha: Tensor, sigma: Tensor):
        return 1.0

    def __repr__(self):
        return f"{type(self).__name__}()"


class EpsHead(Head):
    name = "eps"

    def target(self, x0, noise, alpha, sigma):
        return noise

    def to_eps(self, out, x, alpha, sigma):
        return out

    def to_x0(self, out, x, alpha, sigma):
        return (x - sigma * out) / alpha


class X0Head(Head):
    name = "x0"

    def target(self, x0, noise, alpha, sigma):
        return x0

    def to_eps(self, out, x, alpha, sigma):
        return (x - alpha * out) / sigma

    def to_x0(self, out, x, alpha, sigma):
        return out

    def to_score(self, out, x, alpha, sigma):
        return -(x - alpha * out) / (sigma * sigma)


class VHead(Head):
    name = "v"

    def target(self, x0, noise, alpha, sigma):
        return alpha * noise - sigma * x0

    def to_eps(self, out, x, alpha, sigma):
        return (sigma * x + alpha * out) / (alpha * alpha + sigma * sigma)

    def to_x0(self, out, x, alpha, sigma):
        return (alpha * x - sigma * out) / (alpha * alpha + sigma * sigma)

    def loss_scale(self, alpha, sigma):
        return torch.rsqrt(alpha * alpha + sigma * sigma)


class ScoreHead(Head):
    name = "score"

    def target(self, x0, noise, alpha, sigma):
        return -noise / sigma

    def to_eps(self, out, x, alpha, sigma):
        return -sigma * out

    def to_x0(self, out, x, alpha, sigma):
        return (x + sigma * sigma * out) / alpha

    def to_score(self, out, x, alpha, sigma):
        return out

    def loss_scale(self, alpha, sigma):
        return sigma


HEADS = {cls.name: cls for cls in (EpsHead, X0Head, VHead, ScoreHead)}


def get_head(name: str) -> Head:
    try:
        return HEADS[name]()
    except KeyError:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(HEADS)}") from None
