"""Forward SDEs of Score SDE (Song et al., 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations", Sec. 3.4 and Appendix B/C).

Every SDE here is linear, dX = f(t) X dt + g(t) dW, so its perturbation kernel is Gaussian:

    x_t = alpha(t) x_0 + sigma(t) z,      z ~ N(0, I).

The whole package consumes an SDE through its methods -- ``alpha_sigma``, ``derivatives``,
``log_snr`` and its inverse, ``drift_diffusion``, ``discretize``, ``alpha_vanishes`` -- never
through its type: a new SDE or path (``scorelab.paths.interpolants``) works with every head,
loss and sampler unchanged.

* VP  (Eq. 11):  dX = -1/2 beta(t) X dt + sqrt(beta(t)) dW,
                 alpha = exp(-B(t)/2), sigma = sqrt(1 - exp(-B(t))),  B(t) = int_0^t beta.
* sub-VP (Eq. 17): same drift, g(t) = sqrt(beta(t) (1 - exp(-2 B(t)))),
                 alpha = exp(-B(t)/2), sigma = 1 - exp(-B(t)).
* VE  (Eq. 9/30): dX = sqrt(d sigma^2/dt) dW,  sigma(t) = smin (smax/smin)^t, alpha = 1.
"""

from __future__ import annotations

import abc
import functools
import math

import torch
from torch import Tensor

from scorelab.paths.schedules import BetaSchedule, make_beta_schedule


def batch_broadcast(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample vector [B] so that it broadcasts against x [B, ...]."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def transition_kernel(alpha_s: Tensor, sigma_s: Tensor, alpha_t: Tensor,
                      sigma_t: Tensor) -> tuple[Tensor, Tensor]:
    """(a, s_ts^2) of the Gaussian kernel between the marginals at times s < t of a linear
    SDE,

        x_t = a x_s + s_ts z,   a = alpha_t / alpha_s,   s_ts^2 = sigma_t^2 - a^2 sigma_s^2

    (clamped at 0 against rounding). The forward step (``ForwardPath.transition``), DDPM's
    posterior (pc's ancestral predictor) and DDIM's noise are all written with it."""
    a = alpha_t / alpha_s
    return a, (sigma_t * sigma_t - a * a * sigma_s * sigma_s).clamp(min=0)


def _per_sample_sum(x: Tensor) -> Tensor:
    return x.flatten(1).sum(dim=1)


class ForwardPath(abc.ABC):
    """A linear forward SDE on t in [0, T], discretised into N steps where needed.

    Subclasses define ``alpha_sigma`` (the perturbation kernel), ``drift_diffusion``
    (f(x,t), g(t)) and the prior; everything else (marginals, reverse-time SDE,
    Euler–Maruyama discretisation, the backbone's noise label) follows generically.
    """

    T: float = 1.0

    def __init__(self, N: int = 1000, sampling_eps: float = 1e-3):
        if N < 2:
            raise ValueError(f"N must be >= 2, got {N}")
        self.N = int(N)
        self.sampling_eps = float(sampling_eps)

    # ---- what every SDE defines -------------------------------------------------
    @abc.abstractmethod
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)) of the kernel x_t = alpha x_0 + sigma z, each shaped like t."""

    @abc.abstractmethod
    def drift_diffusion(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Drift f(x, t) (shaped like x) and diffusion g(t) (shaped like t)."""

    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior p_T."""

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha'(t), sigma'(t)), from the SDE: alpha' = f alpha and, since
        d sigma^2 / dt = 2 f sigma^2 + g^2, sigma' = (f sigma^2 + g^2 / 2) / sigma.
        Subclasses with closed forms override it."""
        alpha, sigma = self.alpha_sigma(t)
        one = torch.ones_like(t)
        f, g = self.drift_diffusion(one, t)
        return f * alpha, (f * sigma * sigma + 0.5 * g * g) / sigma

    def coefficients(self, t: Tensor, like: Tensor | None = None):
        """alpha, sigma, alpha', sigma' at t; broadcast against and cast to ``like`` if given."""
        alpha, sigma = self.alpha_sigma(t)
        d_alpha, d_sigma = self.derivatives(t)
        if like is None:
            return alpha, sigma, d_alpha, d_sigma
        return tuple(batch_broadcast(c, like).to(like.dtype)
                     for c in (alpha, sigma, d_alpha, d_sigma))

    def interpolate(self, x0: Tensor, noise: Tensor, coefficients) -> Tensor:
        """x_t = alpha x0 + sigma noise, the training input the losses draw (the place where a
        coupling of x0 and noise, e.g. minibatch optimal transport, would go)."""
        return coefficients[0] * x0 + coefficients[1] * noise

    @functools.cached_property
    def alpha_vanishes(self) -> bool:
        """Whether alpha(T) = 0 (flow-matching paths): x0 cannot be read off a score there,
        and lambda(T) = -inf."""
        return bool(self.alpha_sigma(torch.tensor([self.T], dtype=torch.float64))[0] == 0)

    # ---- derived ------------------------------------------------------------------
    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean alpha(t) x_0 and std sigma(t) of p_{0t}(x_t | x_0)."""
        alpha, sigma = self.alpha_sigma(t)
        return batch_broadcast(alpha, x) * x, sigma

    def prior_sampling(self, shape, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> Tensor:
        if generator is not None and device is None:
            device = generator.device
        return self.prior_std() * torch.randn(*shape, generator=generator, device=device,
                                              dtype=dtype)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, s^2 I) per sample, s = prior_std()."""
        s = self.prior_std()
        d = z[0].numel()
        return -0.5 * d * math.log(2 * math.pi * s * s) - _per_sample_sum(z * z) / (2 * s * s)

    def noise_label(self, t: Tensor) -> Tensor:
        """Score SDE's conditioning label: (N - 1) t / T, the DDPM timestep index for VP and
        sub-VP (999 t); VE overrides it with sigma(t). ``ScoreModel.noise_label`` chooses
        between this, the time label and EDM's log-sigma label."""
        return self.time_label(t)

    def time_label(self, t: Tensor) -> Tensor:
        """(N - 1) t / T on any SDE (scorelab's VE label before it followed Score SDE)."""
        return t * ((self.N - 1) / self.T)

    def discrete_index(self, t: Tensor) -> Tensor:
        """Index i of the discrete step that contains t: Score SDE's floor(t (N-1) / T), with
        a little slack so that the grid points t = i T / (N-1) map to i despite rounding."""
        return (t * ((self.N - 1) / self.T) + 1e-4).floor().long().clamp(0, self.N - 1)

    def discretize(self, x: Tensor, t: Tensor, dt: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One forward step x(t) = x(t - dt) + f + G z.

        dt=None: the SDE's own N-step chain (Score SDE): Euler–Maruyama here, f = f(x,t) T/N,
        G = g(t) sqrt(T/N); VP and VE override it with the DDPM and SMLD steps.
        dt given (any step size, e.g. a sampler with fewer steps than N): the exact
        transition kernel of the linear SDE from s = t - dt to t,
            x_t = a x_s + s_ts z,  a = alpha(t) / alpha(s),  s_ts^2 = sigma(t)^2 - a^2 sigma(s)^2,
        i.e. f = (a - 1) x, G = s_ts. It reduces to the DDPM / SMLD steps on their grids.
        """
        if dt is not None:
            return self.transition_discretize(x, t, dt)
        return self.chain_discretize(x, t)

    def chain_discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The SDE's own N-step chain: Euler–Maruyama unless a subclass knows better."""
        step = self.T / self.N
        drift, diffusion = self.drift_diffusion(x, t)
        return drift * step, diffusion * math.sqrt(step)

    def table(self, name: str, device) -> Tensor:
        """A discrete schedule attribute (e.g. ``discrete_betas``) on ``device``, copied there
        once and cached, so that loops indexing it make no per-step transfer."""
        device = torch.device(device)
        cache = self.__dict__.setdefault("_tables", {})
        key = (name, device)
        if key not in cache:
            cache[key] = getattr(self, name).to(device)
        return cache[key]

    def transition(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a, s_ts) of the kernel x_t = a x_s + s_ts z between times s < t."""
        a, var = transition_kernel(*self.alpha_sigma(s), *self.alpha_sigma(t))
        return a, torch.sqrt(var)

    def transition_discretize(self, x: Tensor, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        a, g = self.transition(t - dt, t)
        return (batch_broadcast(a, x).to(x.dtype) - 1.0) * x, g

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha(t) / sigma(t)), decreasing in t."""
        alpha, sigma = self.alpha_sigma(t)
        return torch.log(alpha) - torch.log(sigma)

    def t_from_log_snr(self, lam: Tensor, iters: int = 64) -> Tensor:
        """The inverse of log_snr on [0, T], by bisection in float64 (any SDE with a
        monotone log-SNR; grids call it once, never inside a sampling loop)."""
        lam = lam.double()
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam        # lambda decreases: the root is later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """Reverse-time SDE (Eq. 6) or probability-flow ODE (Eq. 13) of a forward SDE:

        dx = [f(x,t) - c g(t)^2 score(x,t)] dt + [g(t) if SDE else 0] dw_bar,

    with c = 1 for the SDE and 1/2 for the ODE; ``discretize`` applies the same change to
    the forward SDE's own discretisation (reverse diffusion predictor, Eq. 45/47).
    """

    def __init__(self, forward: ForwardPath, score_fn, probability_flow: bool = False):
        self.forward_path = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N = forward.N
        self.T = forward.T
        self._c = 0.5 if probability_flow else 1.0

    def drift_diffusion(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        drift, diffusion = self.forward_path.drift_diffusion(x, t)
        g2 = batch_broadcast(diffusion * diffusion, x)
        drift = drift - g2 * self.score_fn(x, t) * self._c
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x: Tensor, t: Tensor, dt: Tensor | None = None) -> tuple[Tensor, Tensor]:
        f, G = self.forward_path.discretize(x, t, dt)
        rev_f = f - batch_broadcast(G * G, x) * self.score_fn(x, t) * self._c
        return rev_f, torch.zeros_like(G) if self.probability_flow else G


class VPSDE(ForwardPath):
    """Variance-preserving SDE, the continuous limit of DDPM (Eq. 11).

    Args:
        beta_min: beta(0) of the linear schedule (Score SDE default 0.1).
        beta_max: beta(1) of the linear schedule (Score SDE default 20).
        N: number of discrete steps (DDPM's 1000).
        schedule: "linear" (DDPM / Score SDE) or "cosine" (Nichol & Dhariwal 2021).
        cosine_s: offset s of the cosine schedule.
        sampling_eps: smallest time the samplers integrate to (Score SDE: 1e-3 for VP).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000,
                 schedule: str = "linear", cosine_s: float = 0.008,
                 sampling_eps: float = 1e-3):
        super().__init__(N=N, sampling_eps=sampling_eps)
        self.schedule: BetaSchedule = make_beta_schedule(schedule, beta_min=beta_min,
                                                         beta_max=beta_max, s=cosine_s)
        betas = self.schedule.discrete_betas(self.N)
        self.discrete_betas = betas
        self.ddpm_alphas = 1.0 - betas      # DDPM's alpha_i = 1 - beta_i (not alpha(t))
        self.alphas_cumprod = torch.cumprod(self.ddpm_alphas, dim=0)

    def alpha_sigma(self, t):
        B = self.schedule.integral(t)
        return torch.exp(-0.5 * B), torch.sqrt(-torch.expm1(-B))

    def drift_diffusion(self, x, t):
        beta = self.schedule.beta(t)
        return -0.5 * batch_broadcast(beta, x) * x, torch.sqrt(beta)

    def derivatives(self, t):
        """alpha' = -beta alpha / 2; sigma' = beta alpha^2 / (2 sigma) (alpha^2 + sigma^2 = 1)."""
        alpha, sigma = self.alpha_sigma(t)
        beta = self.schedule.beta(t)
        return -0.5 * beta * alpha, 0.5 * beta * alpha * alpha / sigma

    def prior_std(self):
        return 1.0

    def discrete_alpha_sigma(self, i: Tensor) -> tuple[Tensor, Tensor]:
        """DDPM's sqrt(alpha_bar_i), sqrt(1 - alpha_bar_i) for integer steps i."""
        ab = self.table("alphas_cumprod", i.device)[i]
        return ab.sqrt(), (1.0 - ab).sqrt()

    def chain_discretize(self, x, t):
        """DDPM forward step x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z (Eq. 47's
        forward counterpart): f = (sqrt(1 - beta_i) - 1) x, G = sqrt(beta_i)."""
        beta = self.table("discrete_betas", t.device)[self.discrete_index(t)].to(x.dtype)
        f = (batch_broadcast(torch.sqrt(1.0 - beta), x) - 1.0) * x
        return f, torch.sqrt(beta)


class SubVPSDE(ForwardPath):
    """sub-VP SDE (Eq. 17): VP's drift with diffusion sqrt(beta(t)(1 - exp(-2B(t)))), whose
    marginal std 1 - exp(-B(t)) is bounded by VP's; good likelihoods.

    Args:
        beta_min, beta_max, N, schedule, cosine_s, sampling_eps: as for ``VPSDE``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000,
                 schedule: str = "linear", cosine_s: float = 0.008,
                 sampling_eps: float = 1e-3):
        super().__init__(N=N, sampling_eps=sampling_eps)
        self.schedule = make_beta_schedule(schedule, beta_min=beta_min, beta_max=beta_max,
                                           s=cosine_s)

    def alpha_sigma(self, t):
        B = self.schedule.integral(t)
        return torch.exp(-0.5 * B), -torch.expm1(-B)

    def drift_diffusion(self, x, t):
        beta = self.schedule.beta(t)
        discount = -torch.expm1(-2.0 * self.schedule.integral(t))
        return -0.5 * batch_broadcast(beta, x) * x, torch.sqrt(beta * discount)

    def derivatives(self, t):
        """alpha' = -beta alpha / 2; sigma' = beta exp(-B) = beta alpha^2."""
        alpha, _ = self.alpha_sigma(t)
        beta = self.schedule.beta(t)
        return -0.5 * beta * alpha, beta * alpha * alpha

    def prior_std(self):
        return 1.0


class VESDE(ForwardPath):
    """Variance-exploding SDE, the continuous limit of SMLD / NCSN (Eq. 9 and 30).

    Args:
        sigma_min: sigma(0) (Score SDE default 0.01).
        sigma_max: sigma(1); should exceed the largest pairwise data distance (50 for CIFAR-10).
        N: number of noise levels of the discrete SMLD chain.
        sampling_eps: smallest time the samplers integrate to (Score SDE: 1e-5 for VE).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000,
                 sampling_eps: float = 1e-5):
        super().__init__(N=N, sampling_eps=sampling_eps)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        # SMLD's geometric noise levels, ascending: discrete_sigmas[i] = sigma(i / (N - 1)).
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(self.sigma_min),
                                                        math.log(self.sigma_max), self.N,
                                                        dtype=torch.float64)).float()

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def alpha_sigma(self, t):
        return torch.ones_like(t), self.sigma(t)

    def drift_diffusion(self, x, t):
        return torch.zeros_like(x), self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def derivatives(self, t):
        """alpha' = 0; sigma' = sigma log(smax / smin)."""
        return torch.zeros_like(t), self.sigma(t) * self._log_ratio

    def noise_label(self, t):
        """Score SDE's VE label: the noise scale sigma(t) itself (NCSN++ embeds its log)."""
        return self.sigma(t)

    def prior_std(self):
        return self.sigma_max

    def chain_discretize(self, x, t):
        """SMLD step x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z (Eq. 46 forward form),
        with sigma_{-1} = 0."""
        i = self.discrete_index(t)
        sig = self.table("discrete_sigmas", t.device)
        prev = torch.where(i == 0, torch.zeros_like(sig[i]), sig[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), torch.sqrt(sig[i] ** 2 - prev ** 2).to(x.dtype)
