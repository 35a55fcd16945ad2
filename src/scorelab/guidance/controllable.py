"""Controllable generation: inpainting and colorization with any sampler (Song et al. 2021,
Score SDE, Sec. 5 and App. I.2), and RePaint's resampling (Lugmayr et al. 2022).

Both are a ``Constraint``: coordinates of x in an orthonormal basis that are known, z = B x,
z_known = B y (B the identity for inpainting; for colorization B acts on the colour channels
with grey = (R + G + B) / sqrt(3) as its first row, so the known grey channel is one
coordinate and, B being orthonormal, the noise stays isotropic N(0, I) in the new basis).

Projection method (Score SDE): after every sampler step, to time t', the known coordinates
are replaced by the observation noised to the post-step level,
    z_known <- alpha(t') B y + sigma(t') xi,   xi ~ N(0, I) fresh,
and at the end the known coordinates are pasted back exactly (x = y on known pixels, to the
last bit, for inpainting).

RePaint (``n_resample`` > 1): the grid is walked in segments of ``jump_length`` steps; each
segment is sampled (with projection) ``n_resample`` times, re-noising the result back to the
segment's start with the forward kernel x_t = a x_s + s_ts xi (``ForwardPath.transition``) in
between, which lets the generated part harmonise with the known part.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scorelab.util.checks import check_values, integer
from scorelab.sampling import SampleResult, prepare
from scorelab.sampling.common import randn_like
from scorelab.sampling.registry import DEFAULT_SAMPLER, sampler_options

# Rows: grey (R+G+B)/sqrt(3) and two orthonormal chroma directions.
COLOR_BASIS = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]]) \
    / torch.tensor([math.sqrt(3), math.sqrt(2), math.sqrt(6)])[:, None]


class Constraint:
    """Known coordinates of x in an orthonormal channel basis.

    Args:
        observation: [B, C, ...] (or [1, C, ...]) the data whose known part is kept.
        known: bool mask broadcastable to the observation, in basis coordinates (True:
            known); for inpainting, the known pixels.
        basis: [C, C] orthonormal matrix acting on the channel dimension (None: identity).
    """

    def __init__(self, observation: Tensor, known: Tensor, basis: Tensor | None = None):
        self.observation, self.known = observation, known.bool()
        self.basis = basis
        if basis is not None:
            eye = torch.eye(basis.shape[0], dtype=basis.dtype)
            if not torch.allclose(basis @ basis.T, eye, atol=1e-5):
                raise ValueError("Constraint basis must be orthonormal")

    def to_basis(self, x: Tensor) -> Tensor:
        if self.basis is None:
            return x
        return torch.einsum("dc,bc...->bd...", self.basis.to(x), x)

    def from_basis(self, z: Tensor) -> Tensor:
        if self.basis is None:
            return z
        return torch.einsum("cd,bc...->bd...", self.basis.to(z), z)

    def _known(self, x: Tensor) -> Tensor:
        return self.known.to(x.device).expand_as(x)

    def project(self, x: Tensor, alpha: Tensor, sigma: Tensor, generator=None) -> Tensor:
        """x with its known coordinates replaced by the observation noised to (alpha, sigma)."""
        z, zy = self.to_basis(x), self.to_basis(self.observation.to(x))
        noisy = alpha * zy + sigma * randn_like(z, generator)
        return self.from_basis(torch.where(self._known(z), noisy.expand_as(z), z))

    def paste(self, x: Tensor) -> Tensor:
        """x with its known coordinates set to the observation's, exactly."""
        if self.basis is None:
            return torch.where(self._known(x), self.observation.to(x).expand_as(x), x)
        z, zy = self.to_basis(x), self.to_basis(self.observation.to(x))
        return self.from_basis(torch.where(self._known(z), zy.expand_as(z), z))


def inpainting(observation: Tensor, hole: Tensor) -> Constraint:
    """Fill ``hole`` (bool, True where pixels are to be generated; [H, W], [B, 1, H, W], ...)
    keeping the rest of ``observation``."""
    return Constraint(observation, ~hole.bool())


def colorization(observation: Tensor) -> Constraint:
    """Generate colour for the grey level of ``observation`` [B, 3, H, W] (RGB; only its
    grey coordinate (R + G + B) / sqrt(3) is used: a grey image with R = G = B works)."""
    if observation.dim() < 2 or observation.shape[1] != 3:
        raise ValueError(f"colorization needs RGB data (3 channels); got shape "
                         f"{tuple(observation.shape)}")
    known = torch.zeros((1, 3) + (1,) * (observation.dim() - 2), dtype=torch.bool)
    known[:, 0] = True
    return Constraint(observation, known, COLOR_BASIS)


def grey_to_rgb(grey: Tensor) -> Tensor:
    """[B, 1, ...] grey levels in the data range -> [B, 3, ...] with R = G = B."""
    return grey.expand(grey.shape[0], 3, *grey.shape[2:])


# ---- masks: True where pixels are missing (the hole) -----------------------------------------

def left_half(h: int, w: int, generator=None) -> Tensor:
    hole = torch.zeros(h, w, dtype=torch.bool)
    hole[:, : w // 2] = True
    return hole


def centre_square(h: int, w: int, generator=None) -> Tensor:
    hole = torch.zeros(h, w, dtype=torch.bool)
    hole[h // 4: h - h // 4, w // 4: w - w // 4] = True
    return hole


def random_strokes(h: int, w: int, generator=None, strokes: int = 4) -> Tensor:
    """A few thick random line segments (free-form masks in the manner of DeepFill)."""
    hole = torch.zeros(h, w, dtype=torch.bool)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    width = max(1.0, min(h, w) / 10)
    for _ in range(strokes):
        p0 = torch.rand(2, generator=generator) * torch.tensor([h - 1.0, w - 1.0])
        p1 = torch.rand(2, generator=generator) * torch.tensor([h - 1.0, w - 1.0])
        d = p1 - p0
        lam = (((ys - p0[0]) * d[0] + (xs - p0[1]) * d[1]) / d.dot(d).clamp(min=1e-6)).clamp(0, 1)
        dist = torch.hypot(ys - (p0[0] + lam * d[0]), xs - (p0[1] + lam * d[1]))
        hole |= dist <= width
    return hole


MASKS = {"left_half": left_half, "centre_square": centre_square,
         "random_strokes": random_strokes}


def named_mask(name: str, h: int, w: int, seed: int = 0) -> Tensor:
    """The hole [H, W] of a named pattern (``MASKS``)."""
    if name not in MASKS:
        raise ValueError(f"unknown mask {name!r}; named masks: {', '.join(MASKS)} (or a file)")
    return MASKS[name](h, w, torch.Generator().manual_seed(seed))


# ---- sampling --------------------------------------------------------------------------------

class _Projecting:
    """The samplers' per-step callback that projects onto the constraint at the post-step
    time of the grid segment it runs on."""

    replaces_state = True          # ode rk45 then solves grid interval by grid interval

    def __init__(self, constraint, path, generator, callback):
        self.constraint, self.path, self.generator, self.callback = \
            constraint, path, generator, callback
        self.alphas = self.sigmas = None

    def on(self, segment: Tensor) -> "_Projecting":
        self.alphas, self.sigmas = self.path.alpha_sigma(segment)
        return self

    def __call__(self, i: int, x: Tensor) -> Tensor:
        x = self.constraint.project(x, self.alphas[i + 1], self.sigmas[i + 1], self.generator)
        if self.callback is not None:
            self.callback(i, x)
        return x


def check_resampling(jump_length, n_resample) -> None:
    """RePaint's settings: integers >= 1 (ValueError naming ``task.<key>``)."""
    check_values("task", {"jump_length": jump_length, "n_resample": n_resample},
                 {"jump_length": integer(1), "n_resample": integer(1)})


@torch.no_grad()
def controlled_sample(model, path, constraint: Constraint, shape,
                      sampler: str = DEFAULT_SAMPLER["name"],
                      steps: int = DEFAULT_SAMPLER["steps"],
                      generator: torch.Generator | None = None, device=None,
                      jump_length: int = 1, n_resample: int = 1, grid: str | None = None,
                      rho: float = 7.0, eps: float | None = None, shift: float = 1.0,
                      final: str = "eps", callback=None, **options) -> SampleResult:
    """Samples that agree with ``constraint`` (projection method; RePaint if
    ``n_resample`` > 1), with any registered sampler. Arguments as ``sampling.sample``;
    NFE counts every evaluation, resampling included."""
    check_resampling(jump_length, n_resample)
    fn, model, x, ts = prepare(model, path, shape, sampler, steps, generator, None, device,
                               grid, rho, eps, options, callback, shift, final)
    project = _Projecting(constraint, path, generator, callback)
    n = len(ts) - 1
    if n_resample == 1:
        x, nfe = fn(model, path, x, ts, generator=generator, callback=project.on(ts), **options)
        return SampleResult(constraint.paste(x), nfe)
    # RePaint: segments of jump_length steps, each sampled n_resample times; a final
    # noise-free step (pc's denoise) only at the very end.
    has_denoise = "denoise" in sampler_options(sampler)
    nfe, k = 0, 0
    while k < n:
        end = min(k + jump_length, n)
        segment = ts[k:end + 1]
        seg_options = dict(options)
        if has_denoise and end < n:
            seg_options["denoise"] = False
        start = x
        for r in range(n_resample):
            if r > 0:
                a, s = path.transition(ts[end], ts[k])
                start = a * x + s * randn_like(x, generator)
            x, m = fn(model, path, start, segment, generator=generator,
                      callback=project.on(segment), **seg_options)
            nfe += m
        k = end
    return SampleResult(constraint.paste(x), nfe)
