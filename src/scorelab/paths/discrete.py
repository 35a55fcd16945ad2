"""Paths of models trained on N discrete timesteps (DDPM and its descendants, diffusers'
schedulers), continuous in between, so that every scorelab sampler, guidance method and
likelihood runs on a network someone else trained.

``DiscreteVPPath`` (Ho et al. 2020; the VP family): training timestep i = 0 .. N-1
(diffusers' index, DDPM's t = i + 1) sits at

    t_i = (i + 1) / N,   alpha(t_i)^2 = alphabar_i,   sigma(t_i)^2 = 1 - alphabar_i

exactly (the scheduler's ``alphas_cumprod``); t = 0 is clean data (alpha = 1, sigma = 0) and
T = 1 the last timestep. In between, with s = sigma / alpha the VE-equivalent noise level
(EDM's sigma), log s is linear in t, so a level between two training levels lies at the
fractional timestep k-diffusion's ``DiscreteSchedule.sigma_to_t`` gives it (linear
interpolation in log sigma); alpha = 1 / sqrt(1 + s^2), sigma = s alpha, and on a piece with
c = d log s / dt:  alpha' = -c s^2 alpha^3,  sigma' = c s alpha^3. Below the first knot, where
log s -> -inf, -log alpha^2 is linear in t (a constant beta = b): alpha' = -b alpha / 2,
sigma' = b alpha^2 / (2 sigma).

The network's timestep input (``noise_label``) is u = N t - 1 at t >= t_0 (0 below):
"interpolated" feeds the fractional u, "nearest" rounds it to the nearest training timestep
(k-diffusion's ``quantize``); the input scaling and the conversions use the exact level
either way. At the knots both are the integer timestep.

``TimestepLinearPath``: the linear path of diffusers' flow-matching models (SD3, ...):
sigma = t, timestep input N t (their ``sigma * num_train_timesteps``).

``scheduler_grid`` of either path: the times of the diffusers scheduler's own loop (its
timestep spacing, offset, shift and final step), so scorelab's samplers can run on exactly
the timesteps the original pipeline uses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scorelab.paths.interpolants import InterpolantPath, LinearPath

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_INPUTS = ("interpolated", "nearest")
SPACINGS = ("leading", "trailing", "linspace")
# How a scheduler family spaces its inference timesteps: "single" (DDPM, DDIM, PNDM: `steps`
# points of [0, N - 1]) or "multistep" (DPM-Solver, UniPC, DEIS: `steps + 1` points, the
# last dropped).
SPACING_STYLES = ("single", "multistep")


def scheduler_betas(schedule: str, N: int, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> Tensor:
    """The betas [N] of a diffusers ``beta_schedule``, in float32 as the schedulers make them:
    linear (DDPM: linspace(b0, b1, N)), scaled_linear (latent diffusion:
    linspace(sqrt(b0), sqrt(b1), N)^2) and squaredcos_cap_v2 (Nichol & Dhariwal 2021, Eq. 17:
    1 - alphabar(i+1 / N) / alphabar(i / N), alphabar(u) = cos^2((u + 0.008) / 1.008 pi/2),
    capped at 0.999)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, N, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, N, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        def alpha_bar(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - alpha_bar((i + 1) / N) / alpha_bar(i / N), 0.999)
                             for i in range(N)], dtype=torch.float32)
    raise ValueError(f"unknown beta schedule {schedule!r}; known: {', '.join(BETA_SCHEDULES)}")


def alphas_cumprod(betas: Tensor) -> Tensor:
    """alphabar_i = prod_{j <= i} (1 - beta_j), in the betas' dtype (the schedulers' float32)."""
    return torch.cumprod(1.0 - betas, dim=0)


def scheduler_timesteps(spacing: str, steps: int, N: int, offset: int = 0,
                        style: str = "single") -> list[int]:
    """The integer timesteps, descending, a diffusers scheduler evaluates with ``steps``
    inference steps (``timestep_spacing``, ``steps_offset``; ``SPACING_STYLES``):
    leading: arange(steps) * (N // steps) + offset; trailing: round(arange(N, 0, -N / steps))
    - 1; linspace: round(linspace(0, N - 1, steps)). The multistep family spaces steps + 1
    points and drops the last."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; known: {', '.join(SPACINGS)}")
    if style not in SPACING_STYLES:
        raise ValueError(f"unknown spacing style {style!r}; known: {', '.join(SPACING_STYLES)}")
    if not 1 <= steps <= N:
        raise ValueError(f"a scheduler with {N} training timesteps takes 1 to {N} steps, "
                         f"got {steps}")
    extra = 1 if style == "multistep" else 0
    if spacing == "linspace":
        ts = torch.linspace(0, N - 1, steps + extra, dtype=torch.float64).round().flip(0)[:steps]
    elif spacing == "leading":
        ts = (torch.arange(steps + extra, dtype=torch.float64) * (N // (steps + extra))
              ).flip(0)[:steps] + offset
    else:
        ts = torch.arange(N, 0, -N / steps, dtype=torch.float64).round() - 1
    return [int(v) for v in ts.tolist()]


class DiscreteVPPath(InterpolantPath):
    """A VP path through a discrete schedule's ``alphas_cumprod`` (see the module).

    Args:
        alphas_cumprod: alphabar_i of the N training timesteps, decreasing, in (0, 1).
        timestep_input: "interpolated" (fractional timesteps) or "nearest" (rounded).
        spacing: the scheduler's ``timestep_spacing`` (``scheduler_grid``).
        steps_offset: the scheduler's ``steps_offset`` (leading spacing).
        spacing_style: "single" or "multistep" (``SPACING_STYLES``); None: a scheduler
            whose own timesteps ``scheduler_grid`` does not reproduce.
        final_clean: whether the scheduler's last step reaches clean data (DDIM's
            ``set_alpha_to_one``, DPM-Solver's ``final_sigmas_type="zero"``) rather than the
            first training timestep.
    """

    def __init__(self, alphas_cumprod: Tensor, timestep_input: str = "interpolated",
                 spacing: str = "leading", steps_offset: int = 0,
                 spacing_style: str | None = "single", final_clean: bool = True):
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        N = len(ab)
        super().__init__(N=N, sampling_eps=1.0 / N)
        if N < 2 or not bool(((ab > 0) & (ab < 1)).all()) or not bool((ab[1:] < ab[:-1]).all()):
            raise ValueError("alphas_cumprod must be at least 2 values, strictly decreasing, in "
                             "(0, 1) (a zero terminal SNR schedule is not supported)")
        if timestep_input not in TIMESTEP_INPUTS:
            raise ValueError(f"unknown timestep input {timestep_input!r}; known: "
                             f"{', '.join(TIMESTEP_INPUTS)}")
        if spacing_style is not None:
            scheduler_timesteps(spacing, 1, N, steps_offset, spacing_style)   # checks the names
        self.alphas_cumprod = ab.float()
        self.timestep_input = timestep_input
        self.spacing, self.steps_offset = spacing, int(steps_offset)
        self.spacing_style, self.final_clean = spacing_style, bool(final_clean)
        self.log_levels = 0.5 * (torch.log1p(-ab) - torch.log(ab))       # log s_i, float64
        self._b0 = float(-torch.log(ab[0])) * N        # the constant beta below the first knot

    @property
    def reproduces_scheduler(self) -> bool:
        """Whether ``scheduler_grid`` gives the scheduler's own timesteps."""
        return self.spacing_style is not None

    def timestep(self, t: Tensor) -> Tensor:
        """The fractional training timestep u = N t - 1 of times t (float64; within the
        rounding of t's dtype, a few N ulp, of an integer it is that integer, so float32 grid
        times hit their knots)."""
        u = t.double() * self.N - 1.0
        near = u.round()
        return torch.where((u - near).abs() <= 4 * self.N * torch.finfo(t.dtype).eps, near, u)

    def _pieces(self, t: Tensor):
        """(u, log s on the knot pieces, whether t is below the first knot)."""
        u = self.timestep(t)
        table = self.table("log_levels", t.device)
        lo = u.floor().clamp(0, self.N - 2)
        w = (u - lo).clamp(max=1.0)
        i = lo.long()
        log_s = table[i] + w * (table[i + 1] - table[i])
        return u, log_s, u < 0

    def alpha_sigma(self, t):
        u, log_s, below = self._pieces(t)
        s = torch.exp(log_s)
        alpha = torch.rsqrt(1 + s * s)
        B = self._b0 * t.double()                         # below the first knot
        alpha = torch.where(below, torch.exp(-0.5 * B), alpha)
        sigma = torch.where(below, torch.sqrt(-torch.expm1(-B)), s * alpha)
        return alpha.to(t.dtype), sigma.to(t.dtype)

    def derivatives(self, t):
        u, log_s, below = self._pieces(t)
        table = self.table("log_levels", t.device)
        i = u.floor().clamp(0, self.N - 2).long()
        c = (table[i + 1] - table[i]) * self.N            # d log s / dt on the piece
        s = torch.exp(log_s)
        a3 = (1 + s * s) ** -1.5
        d_alpha, d_sigma = -c * s * s * a3, c * s * a3
        B = self._b0 * t.double()
        a = torch.exp(-0.5 * B)
        d_alpha = torch.where(below, -0.5 * self._b0 * a, d_alpha)
        d_sigma = torch.where(below, 0.5 * self._b0 * a * a / torch.sqrt(-torch.expm1(-B)),
                              d_sigma)
        return d_alpha.to(t.dtype), d_sigma.to(t.dtype)

    def log_snr(self, t):
        u, log_s, below = self._pieces(t)
        B = self._b0 * t.double()
        lam = torch.where(below, -0.5 * torch.log(torch.expm1(B)), -log_s)
        return lam.to(t.dtype)

    def prior_std(self):
        return 1.0                          # diffusers' pipelines start from N(0, I)

    def noise_label(self, t):
        """The network's timestep input: u = N t - 1 (>= 0), rounded for "nearest"."""
        u = self.timestep(t).clamp(min=0)
        return (u.round() if self.timestep_input == "nearest" else u).to(t.dtype)

    def timestep_times(self, timesteps) -> Tensor:
        """The times t_i = (i + 1) / N of integer training timesteps i (float64)."""
        return (torch.as_tensor(timesteps, dtype=torch.float64) + 1) / self.N

    def scheduler_grid(self, steps: int) -> Tensor:
        """The scheduler's own loop as a grid (float64): its ``steps`` timesteps, then clean
        data (t = 0) or, without ``final_clean``, the first training timestep."""
        if not self.reproduces_scheduler:
            raise ValueError("grid=scheduler: this scheduler's own timesteps are not "
                             "reproduced (DDPM, DDIM, DPM-Solver, UniPC and DEIS multistep, "
                             "FlowMatch Euler are); use another grid")
        ts = self.timestep_times(scheduler_timesteps(self.spacing, steps, self.N,
                                                     self.steps_offset, self.spacing_style))
        end = 0.0 if self.final_clean else 1.0 / self.N
        if float(ts[-1]) <= end:
            raise ValueError(f"the scheduler's {steps}-step timesteps end at training timestep "
                             f"{int(round(float(ts[-1]) * self.N)) - 1}, its final step's "
                             f"target")
        return torch.cat([ts, torch.tensor([end], dtype=torch.float64)])


class TimestepLinearPath(LinearPath):
    """The linear path (sigma = t) of a flow model trained on timesteps N t (diffusers'
    FlowMatchEulerDiscreteScheduler: ``timestep = sigma * num_train_timesteps``).

    Args:
        num_train_timesteps: N.
        shift: the scheduler's ``shift`` (SD3: 3.0), applied by ``scheduler_grid`` as the
            scheduler does: s' = shift s / (1 + (shift - 1) s).
    """

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0):
        super().__init__(N=num_train_timesteps, sampling_eps=1.0 / num_train_timesteps)
        if not shift > 0:
            raise ValueError(f"the flow shift must be > 0, got {shift}")
        self.shift = float(shift)

    # FlowMatchEulerDiscreteScheduler's sigmas are reproduced (``scheduler_grid``)
    reproduces_scheduler = True

    def noise_label(self, t):
        return t * self.N

    def _shifted(self, s):
        return self.shift * s / (1 + (self.shift - 1) * s)

    def scheduler_grid(self, steps: int) -> Tensor:
        """FlowMatchEulerDiscreteScheduler's sigmas: shift(linspace(1, shift(1 / N), steps))
        (its minimum is the shifted smallest training sigma, shifted again), then 0."""
        if steps < 1:
            raise ValueError(f"sampling needs steps >= 1, got {steps}")
        base = torch.linspace(1.0, self._shifted(1.0 / self.N), steps, dtype=torch.float64)
        return torch.cat([self._shifted(base), torch.zeros(1, dtype=torch.float64)])
