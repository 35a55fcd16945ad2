"""Every sampler x every SDE, with the exact GMM score, reproduces the mixture."""

import math

import pytest
import torch

from conftest import oracle
from scorelab.paths.sde import VESDE
from scorelab.models.mixture import GaussianMixture
from scorelab.sampling import GRIDS, SAMPLERS, make_grid, sample, sampler_options

N = 3000
CONFIGS = {
    "pc_euler_maruyama": ("pc", dict(predictor="euler_maruyama"), 300),
    "pc_reverse_diffusion_langevin": ("pc", dict(predictor="reverse_diffusion",
                                                 corrector="langevin", snr=0.16), 300),
    "pc_reverse_diffusion_ald": ("pc", dict(predictor="reverse_diffusion", corrector="ald",
                                            snr=0.05), 300),
    "pc_ancestral": ("pc", dict(predictor="ancestral"), 300),
    "ode_rk45": ("ode", dict(method="rk45", rtol=1e-5, atol=1e-5), 1),
    "ode_euler": ("ode", dict(method="euler", grid="quadratic"), 300),
    "ode_heun": ("ode", dict(method="heun", grid="quadratic"), 100),
    "ddim": ("ddim", dict(eta=0.0, grid="quadratic"), 100),
    "ddim_eta1": ("ddim", dict(eta=1.0, grid="quadratic"), 200),
    "edm": ("edm", dict(), 40),
    "edm_churn": ("edm", dict(s_churn=20.0), 80),
    "dpm_solver_1": ("dpm_solver", dict(order=1), 100),
    "dpm_solver_2m": ("dpm_solver", dict(order=2), 30),
    "dpm_solver_3m": ("dpm_solver", dict(order=3), 30),
    "dpm_solver_2m_sde": ("dpm_solver", dict(order=2, sde=True), 100),
    "dpm_solver_3m_sde": ("dpm_solver", dict(order=3, sde=True), 100),
    "unipc_2": ("unipc", dict(order=2), 20),
    "unipc_3_bh1": ("unipc", dict(order=3, variant="bh1"), 20),
}


def assert_mode_weights(x, gmm):
    """Mode frequencies within 5 binomial standard errors (+0.5%) of the true weights:
    a few percent at this sample size."""
    freq = torch.bincount(gmm.assign(x), minlength=gmm.n_components).float() / x.shape[0]
    tol = 5 * torch.sqrt(gmm.weights * (1 - gmm.weights) / x.shape[0]) + 0.005
    assert torch.all((freq - gmm.weights).abs() < tol), (freq, gmm.weights)


def energy_distance(a, b):
    return (2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean()
            - torch.cdist(b, b).mean()).item()


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.ring(2, 8, radius=1.0, std=0.1, weights=torch.arange(1.0, 9.0))


@pytest.fixture(scope="module")
def true_vs_true(gmm):
    """Energy distance between independent true samples: the noise floor at this size."""
    a, _ = gmm.sample(N, torch.Generator().manual_seed(1))
    b, _ = gmm.sample(N, torch.Generator().manual_seed(2))
    return a, energy_distance(a, b)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_exact_score_reproduces_mixture(gmm, true_vs_true, path, config):
    name, options, steps = CONFIGS[config]
    truth, floor = true_vs_true
    if path.alpha_vanishes and options.get("predictor") == "reverse_diffusion":
        with pytest.raises(ValueError, match="reverse_diffusion needs alpha"):
            sample(oracle(gmm, path), path, (8, 2), sampler=name, steps=steps, **options)
        return
    if path.alpha_vanishes and name == "pc" and options["predictor"] == "euler_maruyama":
        options = {**options, "diffusion": "sigma"}      # g(T) is infinite there
    res = sample(oracle(gmm, path), path, (N, 2), sampler=name, steps=steps,
                 generator=torch.Generator().manual_seed(0), **options)
    assert torch.isfinite(res.x).all()
    assert energy_distance(res.x, truth) < 4 * max(floor, 1e-3)
    assert_mode_weights(res.x, gmm)
    # each mode has the right spread (std 0.1 per coordinate)
    spread = (res.x - gmm.means[gmm.assign(res.x)]).std().item()
    assert spread == pytest.approx(0.1, rel=0.1)


def test_annealed_langevin_alone_on_ve(gmm):
    """NCSN's sampler, corrector only, on its own SDE."""
    from scorelab.paths.sde import VESDE

    path = VESDE(sigma_min=0.01, sigma_max=5.0)
    res = sample(oracle(gmm, path), path, (N, 2), sampler="pc", predictor="none",
                 corrector="ald", snr=0.1, n_steps=5, steps=200,
                 generator=torch.Generator().manual_seed(0))
    assert_mode_weights(res.x, gmm)
    assert res.nfe == 200 * 5 + 1


def test_nfe_counts(gmm, path):
    score = oracle(gmm, path)

    def nfe(name, steps, **kw):
        calls = []
        res = sample(lambda x, t: calls.append(1) or score(x, t), path, (8, 2), sampler=name,
                     steps=steps, **kw)
        assert res.nfe == len(calls)
        return res.nfe
    pc = {"diffusion": "sigma"} if path.alpha_vanishes else {}
    assert nfe("pc", 30, **pc) == 31
    assert nfe("pc", 30, corrector="langevin", n_steps=2, **pc) == 91
    assert nfe("ode", 10, method="heun", max_ratio=float("inf")) == 20
    assert nfe("ode", 10, method="heun", max_ratio=1.0) == 10      # every step Euler's
    assert nfe("ddim", 10) == 10 and nfe("dpm_solver", 10) == 10
    # from alpha = 0: one Euler step; Heun's correction only where the level shrinks <= 4x
    assert nfe("edm", 10, max_ratio=float("inf")) == 20 - path.alpha_vanishes
    assert nfe("edm", 30) == 60 - path.alpha_vanishes
    assert nfe("edm", 3, max_ratio=1.0) == 3 and nfe("unipc", 10) == 10


# Deterministic samplers: (sampler, options, order of convergence in the step count).
DETERMINISTIC = {
    "ode_euler": ("ode", dict(method="euler"), 1),
    # Heun on every step (the default max_ratio=4 makes the steps into t = eps, whose level
    # falls > 4x on a uniform grid, Euler's: order 2 overall only on finer end steps)
    "ode_heun": ("ode", dict(method="heun", max_ratio=float("inf")), 2),
    "ddim": ("ddim", dict(eta=0.0), 1),
    "edm": ("edm", dict(), 2),
    "dpm_solver_1": ("dpm_solver", dict(order=1), 1),
    "dpm_solver_2m": ("dpm_solver", dict(order=2), 2),
    "dpm_solver_3m": ("dpm_solver", dict(order=3), 2),    # lower_order_final: order 2 overall
    # (multistep methods start with a first-order step: order 2 overall)
    "unipc_1": ("unipc", dict(order=1), 2),            # UniP-1 + UniC-1
    "unipc_2": ("unipc", dict(order=2), 2),
    "unipc_2_bh1": ("unipc", dict(order=2, variant="bh1"), 2),
}


def gaussian_flow_map(path, x_init, mean, std, t_end):
    """Data N(mean, std^2 I): x_t ~ N(alpha_t mean, v_t I) with v_t = alpha_t^2 std^2 +
    sigma_t^2, the PF-ODE velocity is affine in x, and its flow map from T to t_end is the
    increasing affine map between the two Gaussians, in closed form."""
    a_T, s_T = path.alpha_sigma(torch.tensor(path.T, dtype=torch.float64))
    a_e, s_e = path.alpha_sigma(torch.tensor(t_end, dtype=torch.float64))
    v_T, v_e = a_T ** 2 * std ** 2 + s_T ** 2, a_e ** 2 * std ** 2 + s_e ** 2
    return a_e * mean + torch.sqrt(v_e / v_T) * (x_init - a_T * mean)


def test_deterministic_samplers_converge_to_the_exact_pf_ode_map(path, one_thread):
    """From a given x_init, every deterministic sampler with the exact score of a Gaussian
    approaches the closed-form flow map at its order: the error at 80 steps is 2^order
    times smaller than at 40 (measured ratios 1.8-2.0 for order 1, 3.9-5.9 for order 2, in
    float64), and RK45 at tolerance 1e-7 matches it to 1e-5. A wrong coefficient in an
    update, a wrong grid end or an ignored x_init stops the convergence."""
    mean, std = torch.tensor([[0.5, -0.3]], dtype=torch.float64), 0.4
    gauss = GaussianMixture(mean, torch.tensor([std]))
    x_init = path.prior_sampling((64, 2), generator=torch.Generator().manual_seed(3)).double()
    exact = gaussian_flow_map(path, x_init, mean, std, path.sampling_eps)
    res = sample(oracle(gauss, path), path, None, "ode", x_init=x_init, method="rk45",
                 rtol=1e-7, atol=1e-7)
    assert res.x.dtype == torch.float64
    torch.testing.assert_close(res.x, exact, rtol=0, atol=1e-5)
    for name, (sampler, options, order) in DETERMINISTIC.items():
        errors = [(sample(oracle(gauss, path), path, None, sampler, steps=steps,
                          x_init=x_init, **options).x - exact).abs().max().item()
                  for steps in (40, 80)]
        assert errors[1] < 0.5 and errors[0] / errors[1] > 0.8 * 2 ** order, (name, errors)


def test_unipc_3_gains_at_few_steps(path):
    """At 40 / 80 steps UniPC-3's errors reach the float32 grid's floor (1e-6), so its
    order shows from 10 to 20 steps: an error 8 times smaller or better (measured 14-30)."""
    mean, std = torch.tensor([[0.5, -0.3]], dtype=torch.float64), 0.4
    gauss = GaussianMixture(mean, torch.tensor([std]))
    x_init = path.prior_sampling((64, 2), generator=torch.Generator().manual_seed(3)).double()
    exact = gaussian_flow_map(path, x_init, mean, std, path.sampling_eps)
    errors = [(sample(oracle(gauss, path), path, None, "unipc", steps=steps, x_init=x_init,
                      order=3).x - exact).abs().max().item() for steps in (10, 20)]
    assert errors[0] / errors[1] > 8, errors


def test_generator_makes_stochastic_sampling_reproducible(gmm, path):
    def draw(seed):
        pc = {"diffusion": "sigma"} if path.alpha_vanishes else {}
        return sample(oracle(gmm, path), path, (16, 2), "pc", steps=30,
                      generator=torch.Generator().manual_seed(seed), **pc).x
    torch.testing.assert_close(draw(4), draw(4), rtol=0, atol=0)
    assert (draw(4) - draw(5)).abs().min() > 0         # the generator drives every draw


def test_ddim_eta0_is_dpm_solver_order1(gmm, path):
    x_init = path.prior_sampling((32, 2), generator=torch.Generator().manual_seed(5))
    a = sample(oracle(gmm, path), path, None, "ddim", steps=15, x_init=x_init, grid="logsnr").x
    b = sample(oracle(gmm, path), path, None, "dpm_solver", steps=15, x_init=x_init, order=1).x
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grid", [g for g in GRIDS if g != "scheduler"])
def test_grids_run_from_T_to_eps(path, grid):
    ts = make_grid(grid, path, 25, 1e-3)
    assert ts[0].item() == pytest.approx(path.T) and ts[-1].item() == pytest.approx(1e-3)
    assert torch.all(ts[1:] < ts[:-1])
    if grid == "logsnr":
        lam = path.log_snr(ts.double())
        if path.alpha_vanishes:      # lambda(T) = -inf: equal steps from t_1 on
            assert lam[0] == float("-inf")
            assert ts[1].item() == pytest.approx(1 - (1 - 1e-3) / 25)
            lam = lam[1:]
        steps = lam[1:] - lam[:-1]
        torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-3, atol=1e-4)


def test_t_from_log_snr_inverts_log_snr(path):
    t = torch.linspace(1e-4, 1.0, 50, dtype=torch.float64)
    torch.testing.assert_close(path.t_from_log_snr(path.log_snr(t)), t, rtol=1e-9, atol=1e-12)


def test_unknown_sampler_option_and_component_errors(gmm, path):
    with pytest.raises(ValueError, match="known samplers: .*dpm_solver"):
        sample(oracle(gmm, path), path, (4, 2), sampler="heun")
    with pytest.raises(ValueError, match="no option.*snr.*options are: method"):
        sample(oracle(gmm, path), path, (4, 2), sampler="ode", snr=0.1)
    with pytest.raises(ValueError, match="unknown predictor 'ddpm'"):
        sample(oracle(gmm, path), path, (4, 2), sampler="pc", predictor="ddpm")
    with pytest.raises(ValueError, match="unknown time grid"):
        sample(oracle(gmm, path), path, (4, 2), sampler="ddim", grid="cosine")
    assert set(SAMPLERS) == {"pc", "ode", "ddim", "edm", "dpm_solver", "unipc", "meanflow",
                            "consistency"}
    assert sampler_options("ddim") == ["eta", "variance", "x0_variance"]


@pytest.mark.parametrize("recipe", ["vp_eps_dsm", "linear_velocity_flow_matching"])
def test_trained_mlp_against_the_mixture_oracle(gmm, recipe, one_thread):
    """DESIGN §6: with a trained network, the gap to the oracle is the training error.
    The MLP backbone trained for 2,000 seeded steps on fresh mixture draws (~8 s on one
    thread), by diffusion (eps head, VP, DSM loss) or by flow matching (velocity head,
    linear path, conditional flow-matching loss), must sample the mixture (energy distance
    within 6x the true-vs-true floor; measured 2.5-2.9x for diffusion and 1.8-2.1x for flow
    matching over training seeds 0-2) with the right mode weights, and its PF-ODE NLL of
    true samples must lie within 0.6 nats/dim of the exact density's (measured 0.26-0.34 and
    0.19-0.24) and not below it (cross-entropy >= entropy).
    An untrained MLP gives 77,000x and 6.2 nats/dim, the trained eps net read through the
    wrong head (v) 15x and 1.9 nats/dim, 500 training steps 11x: all fail."""
    from scorelab.models.heads import get_head
    from scorelab.likelihood.pf_ode import log_likelihood
    from scorelab.training.losses import DSMLoss
    from scorelab.nets.mlp import MLP
    from scorelab.paths.interpolants import LinearPath
    from scorelab.models.score import ScoreModel
    from scorelab.paths.sde import VPSDE

    steps, lr = 2000, 3e-3
    if recipe == "vp_eps_dsm":
        path, head, loss_fn = VPSDE(), "eps", DSMLoss()
    else:
        path, head, loss_fn = LinearPath(), "velocity", DSMLoss(weighting="velocity")
    torch.manual_seed(0)
    model = ScoreModel(MLP((2,), width=128, depth=3, emb_dim=64), get_head(head), path)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, _ = gmm.sample(256, gen)
        loss = loss_fn(model, x, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()

    n = 2000
    truth, _ = gmm.sample(n, torch.Generator().manual_seed(1))
    other, _ = gmm.sample(n, torch.Generator().manual_seed(2))
    floor = energy_distance(truth, other)
    res = sample(model.prediction_fn(), path, (n, 2), sampler="dpm_solver", steps=20,
                 generator=torch.Generator().manual_seed(0))
    assert energy_distance(res.x, truth) < 6 * floor
    assert_mode_weights(res.x, gmm)

    x, _ = gmm.sample(100, torch.Generator().manual_seed(3))
    model_logp = log_likelihood(model.prediction_fn(), path, x, divergence="exact", rtol=1e-3,
                                atol=1e-3).logp
    gap = (gmm.log_prob(x) - model_logp) / 2                 # nats per dimension, per point
    stderr = gap.std() / len(gap) ** 0.5
    assert -3 * stderr < gap.mean() < 0.6, (gap.mean(), stderr)


@pytest.mark.parametrize("name,options", [("ddim", {}), ("dpm_solver", {"order": 3}),
                                          ("unipc", {"order": 3}), ("edm", {}),
                                          ("ode", {"method": "heun"})])
def test_few_steps_with_an_imperfect_model_stay_near_the_data(gmm, path, name, options):
    """1-3 steps of every deterministic sampler, on every path, with a denoiser off by a
    constant 0.05 (a trained network's error): no blow-up. The samplers in log-SNR land
    within the data's reach (ring radius 1); the ODE's Euler / Heun in t, where it accepts
    the count, may still hold some prior noise (|x| < 5). A step that divides the model's
    error by a small noise level -- Heun's correction right after a step from level 1 to
    0.001 did, 875 FID at 2 steps on the flow default -- throws them tens to thousands of
    radii out. A count that leaves the prior's noise is refused instead (the ODE's fixed
    steps in t: ``test_step_counts_that_leave_the_prior_noise_are_refused``)."""
    from scorelab.models.prediction import Prediction, prediction_fn
    from scorelab.sampling.common import TooFewSteps

    def biased(x, t):
        alpha, sigma = path.alpha_sigma(t)
        return Prediction.from_x0(path, x, t, gmm.noised_denoiser(x, alpha, sigma) + 0.05)

    reach = 5.0 if name == "ode" else 2.0
    for steps in (1, 2, 3):
        try:
            x = sample(prediction_fn(biased), path, (200, 2), name, steps=steps,
                       generator=torch.Generator().manual_seed(0), **options).x
        except TooFewSteps:     # the ODE in t: 1-2 steps on VP, 1-5 on VE
            assert name == "ode", (name, steps)
            continue
        assert torch.isfinite(x).all()
        assert x.norm(dim=1).max() < reach, (steps, x.norm(dim=1).max())


def test_step_counts_that_leave_the_prior_noise_are_refused():
    """Explicit steps in t (the ODE's euler / heun, pc's Euler-Maruyama) multiply a deviation
    along a direction the data does not vary in by 1 - k dt, k = sigma'/sigma (+ g~^2 /
    2 sigma^2 on the reverse SDE; on VE, sigma'/sigma = log(sigma_max / sigma_min) and
    g^2 = 2 sigma sigma'). A count whose steps leave noise of std >= 1 (data units) there is
    refused at start-up with the fewest sane count; ``leftover_noise`` is what the exact
    denoiser of a point actually leaves; the exponential integrators are not limited."""
    from scorelab.paths.sde import SubVPSDE, VPSDE
    from scorelab.sampling import check_sampler, time_grid
    from scorelab.sampling.common import TooFewSteps, euler_stiffness, leftover_noise
    from scorelab.sampling.ode_solvers import probability_flow
    from scorelab.sampling.pc import predictor_corrector, reverse_diffusion_g2

    ve = VESDE(0.01, 50.0)
    ts = time_grid("ode", ve, 6)
    rate = math.log(50.0 / 0.01)
    torch.testing.assert_close(euler_stiffness(ve, ts), rate * (ts[:-1] - ts[1:]).double())
    torch.testing.assert_close(euler_stiffness(ve, ts, reverse_diffusion_g2(ve, ts)),
                               2 * rate * (ts[:-1] - ts[1:]).double(), rtol=1e-6, atol=0)
    em = dict(predictor="euler_maruyama", corrector="none")
    with pytest.raises(TooFewSteps, match=r"pc \(predictor=euler_maruyama\) with 10 steps "
                                          r"leaves noise of std 3.77 .*sampler.steps>=11"):
        check_sampler(ve, "pc", 10, **em)
    check_sampler(ve, "pc", 11, **em)
    with pytest.raises(TooFewSteps, match=r"ode \(method=heun\) with 5 steps.*steps>=6"):
        check_sampler(ve, "ode", 5, method="heun")
    check_sampler(ve, "ode", 6, method="euler")
    with pytest.raises(TooFewSteps, match="steps>=15"):
        check_sampler(VPSDE(), "pc", 6, **em)
    for name, options in (("pc", dict(predictor="ancestral", corrector="none")),
                          ("pc", dict(predictor="reverse_diffusion", corrector="none")),
                          ("ode", dict(method="rk45")), ("ddim", {}), ("dpm_solver", {})):
        for path in (VPSDE(), SubVPSDE()):
            check_sampler(path, name, 2, **options)
    # the exact denoiser of a point: what the steps leave is leftover_noise, whether the
    # count is refused (ODE, 5 steps: 8.6) or not (ODE, 6 steps; reverse SDE, 11 steps)
    point = GaussianMixture(torch.tensor([[0.5, -0.5]]), torch.tensor([1e-6]))
    x_T = ve.prior_sampling((4000, 2), generator=torch.Generator().manual_seed(0))
    for steps, sde in ((5, False), (6, False), (11, True)):
        ts = time_grid("pc", ve, steps)
        if sde:
            x, _ = predictor_corrector(point.prediction_fn(ve), ve, x_T, ts, denoise=False,
                                       generator=torch.Generator().manual_seed(1), **em)
        else:
            x, _ = probability_flow(point.prediction_fn(ve), ve, x_T, ts, method="euler")
        want = leftover_noise(ve, ts, reverse_diffusion_g2(ve, ts) if sde else None)
        got = (x - point.means).pow(2).mean().sqrt()
        assert abs(float(got) / want - 1) < 0.05, (steps, float(got), want)
