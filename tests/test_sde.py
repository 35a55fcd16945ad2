"""SDEs against their closed forms (Score SDE Eqs. 9, 11, 17, 29–30, 45–47)."""

import math

import pytest
import torch

from scorelab.paths.sde import SubVPSDE, VESDE, VPSDE

B0, B1 = 0.1, 20.0
T_GRID = torch.tensor([1e-5, 1e-3, 0.05, 0.3, 0.5, 0.77, 1.0], dtype=torch.float64)


def B(t):
    return B0 * t + 0.5 * (B1 - B0) * t ** 2


def test_vp_marginal_closed_form():
    alpha, sigma = VPSDE(B0, B1).alpha_sigma(T_GRID)
    torch.testing.assert_close(alpha, torch.exp(-0.5 * B(T_GRID)))
    torch.testing.assert_close(sigma, torch.sqrt(1 - torch.exp(-B(T_GRID))))


def test_subvp_marginal_closed_form():
    alpha, sigma = SubVPSDE(B0, B1).alpha_sigma(T_GRID)
    torch.testing.assert_close(alpha, torch.exp(-0.5 * B(T_GRID)))
    torch.testing.assert_close(sigma, 1 - torch.exp(-B(T_GRID)))


def test_ve_marginal_closed_form():
    path = VESDE(0.01, 50.0)
    x = torch.randn(len(T_GRID), 3, dtype=torch.float64)
    mean, std = path.marginal_prob(x, T_GRID)
    torch.testing.assert_close(mean, x)
    torch.testing.assert_close(std, 0.01 * (50.0 / 0.01) ** T_GRID)


def test_sde_coefficients_closed_form():
    x = torch.randn(len(T_GRID), 4, dtype=torch.float64)
    beta = B0 + T_GRID * (B1 - B0)
    drift, g = VPSDE(B0, B1).drift_diffusion(x, T_GRID)
    torch.testing.assert_close(drift, -0.5 * beta[:, None] * x)
    torch.testing.assert_close(g, beta.sqrt())
    drift, g = SubVPSDE(B0, B1).drift_diffusion(x, T_GRID)
    torch.testing.assert_close(drift, -0.5 * beta[:, None] * x)
    torch.testing.assert_close(g, torch.sqrt(beta * (1 - torch.exp(-2 * B(T_GRID)))))
    drift, g = VESDE(0.01, 50.0).drift_diffusion(x, T_GRID)
    sigma = 0.01 * 5000.0 ** T_GRID
    torch.testing.assert_close(drift, torch.zeros_like(x))
    torch.testing.assert_close(g, sigma * math.sqrt(2 * math.log(5000.0)))


def _integrate_moments(path, t_end, n=20000):
    """RK4 on the moment ODEs of dX = f(t) X dt + g(t) dW started at X_0 = 1:
    m' = f m,  v' = 2 f v + g^2. Independent of alpha_sigma."""
    def rhs(t, state):
        tt = torch.tensor([t], dtype=torch.float64)
        drift, g = path.drift_diffusion(torch.ones(1, 1, dtype=torch.float64), tt)
        f = drift.item()          # drift at x = 1 is f(t)
        m, v = state
        return torch.stack([f * m, 2 * f * v + g.item() ** 2])
    state, h = torch.tensor([1.0, 0.0], dtype=torch.float64), t_end / n
    for i in range(n):
        t = i * h
        k1 = rhs(t, state)
        k2 = rhs(t + h / 2, state + h / 2 * k1)
        k3 = rhs(t + h / 2, state + h / 2 * k2)
        k4 = rhs(t + h, state + h * k3)
        state = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return state[0], state[1].sqrt()


@pytest.mark.parametrize("make", [lambda: VPSDE(B0, B1), lambda: SubVPSDE(B0, B1),
                                  lambda: VESDE(0.01, 50.0), lambda: VPSDE(schedule="cosine"),
                                  lambda: SubVPSDE(schedule="cosine")],
                         ids=["vp", "subvp", "ve", "vp_cosine", "subvp_cosine"])
def test_marginal_matches_integrated_sde(make):
    path = make()
    for t in (0.1, 0.5, 1.0):
        m, s = _integrate_moments(path, t, n=2000)
        alpha, sigma = path.alpha_sigma(torch.tensor([t], dtype=torch.float64))
        if isinstance(path, VESDE):
            # VE's X_0 has variance sigma(0)^2 = sigma_min^2 folded in: Var = sigma^2 - sigma_min^2
            sigma = torch.sqrt(sigma ** 2 - path.sigma_min ** 2)
        assert m.item() == pytest.approx(alpha.item(), rel=1e-6)
        assert s.item() == pytest.approx(sigma.item(), rel=1e-5)


def test_prior_logp_is_gaussian(path):
    z = path.prior_sampling((16, 3, 4, 4))
    ref = torch.distributions.Normal(0.0, path.prior_std()).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(path.prior_logp(z), ref, rtol=1e-5, atol=1e-3)
    assert z.std().item() == pytest.approx(path.prior_std(), rel=0.1)


def test_vp_discretize_is_ddpm_step():
    path = VPSDE(B0, B1, N=1000)
    betas = torch.linspace(B0 / 1000, B1 / 1000, 1000, dtype=torch.float64)
    i = torch.tensor([0, 1, 10, 500, 998, 999])
    t = i.double() / 999
    x = torch.randn(len(i), 5, dtype=torch.float64)
    f, G = path.discretize(x, t)
    b = betas[i]
    torch.testing.assert_close(x + f, torch.sqrt(1 - b)[:, None] * x)   # DDPM mean step
    torch.testing.assert_close(G, b.sqrt(), rtol=1e-6, atol=1e-8)


def test_ve_discretize_is_smld_step():
    path = VESDE(0.01, 50.0, N=1000)
    sig = 0.01 * (5000.0 ** (torch.arange(1000, dtype=torch.float64) / 999))
    i = torch.tensor([0, 1, 10, 500, 999])
    x = torch.randn(len(i), 5)
    f, G = path.discretize(x, i.double() / 999)
    prev = torch.where(i == 0, torch.zeros(len(i), dtype=torch.float64), sig[(i - 1).clamp(min=0)])
    assert torch.all(f == 0)
    torch.testing.assert_close(G.double(), torch.sqrt(sig[i] ** 2 - prev ** 2), rtol=1e-4, atol=1e-6)


def test_subvp_discretize_is_euler_maruyama():
    path = SubVPSDE(B0, B1, N=100)
    t, x = torch.tensor([0.2, 0.9]), torch.randn(2, 3)
    drift, g = path.drift_diffusion(x, t)
    f, G = path.discretize(x, t)
    torch.testing.assert_close(f, drift / 100)
    torch.testing.assert_close(G, g * 0.1)


def test_ddpm_chain_approximates_vp_sde():
    # alpha_bar_i = prod_{j<=i} (1 - beta(t_j)/N) ~ exp(-B((i+1)/N)): beta_i ~ beta(t_i) dt.
    path = VPSDE(B0, B1, N=1000)
    i = torch.tensor([0, 100, 500, 999])
    a_disc, s_disc = path.discrete_alpha_sigma(i)
    a_cont, s_cont = path.alpha_sigma((i.float() + 1) / 1000)
    torch.testing.assert_close(a_disc, a_cont, rtol=5e-2, atol=1e-4)
    torch.testing.assert_close(s_disc, s_cont, rtol=5e-2, atol=1e-4)


def test_cosine_schedule_is_improved_ddpm():
    path = VPSDE(schedule="cosine")
    s, u_max = 0.008, path.schedule.u_max
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    alpha, _ = path.alpha_sigma(t)
    torch.testing.assert_close(alpha ** 2, f(t * u_max) / f(torch.zeros(1, dtype=torch.float64)))
    assert alpha[-1].item() ** 2 == pytest.approx(1e-4, rel=1e-6)
    assert 0 < path.discrete_betas.min() and path.discrete_betas.max() <= 0.999


def test_reverse_sde_and_probability_flow(path):
    x, t = torch.randn(3, 4), torch.tensor([0.1, 0.5, 0.9])
    score = lambda x, t: -x  # noqa: E731
    drift, g = path.drift_diffusion(x, t)
    r_drift, r_g = path.reverse(score).drift_diffusion(x, t)
    torch.testing.assert_close(r_drift, drift + g[:, None] ** 2 * x)
    torch.testing.assert_close(r_g, g)
    p_drift, p_g = path.reverse(score, probability_flow=True).drift_diffusion(x, t)
    torch.testing.assert_close(p_drift, drift + 0.5 * g[:, None] ** 2 * x)
    assert torch.all(p_g == 0)
    f, G = path.discretize(x, t)
    rf, rG = path.reverse(score).discretize(x, t)
    torch.testing.assert_close(rf, f + G[:, None] ** 2 * x)


def test_noise_label_is_ddpm_timestep():
    path = VPSDE()
    torch.testing.assert_close(path.noise_label(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 999.0]))


def test_discrete_tables_are_cached_per_device():
    path = VPSDE()
    a = path.table("discrete_betas", "cpu")
    assert a is path.table("discrete_betas", torch.device("cpu"))
    torch.testing.assert_close(a, path.discrete_betas)


def test_discretize_with_dt_is_the_exact_kernel(path):
    t, dt = torch.tensor([0.5, 0.9]), torch.tensor(0.1)
    x = torch.randn(2, 3)
    f, G = path.discretize(x, t, dt)
    alpha_s, sigma_s = path.alpha_sigma(t - dt)
    alpha_t, sigma_t = path.alpha_sigma(t)
    a = alpha_t / alpha_s
    torch.testing.assert_close(x + f, a[:, None] * x)
    torch.testing.assert_close(G ** 2 + a ** 2 * sigma_s ** 2, sigma_t ** 2)


def test_ve_noise_label_is_sigma():
    """Score SDE labels VE by the noise scale itself (NCSN++'s Fourier embedding logs it)."""
    path = VESDE(0.01, 50.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(path.noise_label(t), path.alpha_sigma(t)[1])


SDE_SCHEDULES = {
    "vp_linear": lambda: VPSDE(schedule="linear"), "vp_cosine": lambda: VPSDE(schedule="cosine"),
    "subvp_linear": lambda: SubVPSDE(schedule="linear"),
    "subvp_cosine": lambda: SubVPSDE(schedule="cosine"), "ve": lambda: VESDE(),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(SDE_SCHEDULES))
def test_every_sde_is_finite_at_the_grid_ends(name, dtype):
    """sde, alpha_sigma, discretize (chain and exact kernel), reverse and log_snr are finite
    (and the square-rooted quantities real) at t = 0, the sampling end eps and t = T."""
    path = SDE_SCHEDULES[name]()
    ends = torch.tensor([0.0, path.sampling_eps, path.T], dtype=dtype)
    x = torch.randn(3, 4, dtype=dtype)

    def score(x, t):   # any finite score: the coefficients are what is under test
        return -x

    alpha, sigma = path.alpha_sigma(ends)
    drift, g = path.drift_diffusion(x, ends)
    f, G = path.discretize(x, ends)
    fe, Ge = path.discretize(x[1:], ends[1:], torch.tensor(path.sampling_eps, dtype=dtype))
    rd, rg = path.reverse(score).drift_diffusion(x, ends)
    pd, _ = path.reverse(score, probability_flow=True).drift_diffusion(x, ends)
    rf, rG = path.reverse(score).discretize(x, ends)
    for value in (alpha, sigma, drift, g, f, G, fe, Ge, rd, rg, pd, rf, rG):
        assert torch.isfinite(value).all(), f"{name}: non-finite value at t in {ends.tolist()}"
    assert (sigma >= 0).all() and (g >= 0).all() and (G >= 0).all()
    # log-SNR is +inf at t = 0 where sigma = 0 (VP family); the grids use [eps, T]
    lam = path.log_snr(ends[1:])
    assert torch.isfinite(lam).all() and lam[0] > lam[1]
