"""The fast samplers against diffusers' schedulers (the same network, noise and timesteps, to
1e-5), and the time grids' shift, final step to t = 0 and grid files."""

import json

import pytest
import torch

from scorelab.models.prediction import Prediction
from scorelab.paths.interpolants import LinearPath
from scorelab.paths.sde import VPSDE
from scorelab.sampling import SAMPLERS, check_sampler, make_grid, sample
from scorelab.sampling.grids import load_grid_file, save_grid_file

diffusers = pytest.importorskip("diffusers")

DIM, BATCH, N_TRAIN = 6, 4, 1000


class TinyNet:
    """out = tanh(x W + t b): a network of (x, t) that both loops evaluate."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.W = torch.randn(DIM, DIM, generator=g) / DIM ** 0.5
        self.b = torch.randn(DIM, generator=g)

    def __call__(self, x, t):
        return torch.tanh(x @ self.W + t.reshape(-1, 1) * self.b)


class DiscreteVP:
    """diffusers' DDPM schedule as a path: timestep k at t = (k + 1) / N, alpha^2 its
    alphas_cumprod; t = 0 is the data (alpha = 1, sigma = 0)."""
    T = 1.0

    def __init__(self, alphas_cumprod):
        self.ac = alphas_cumprod.double()

    def alpha_sigma(self, t):
        k = torch.round(t.double() * N_TRAIN).long() - 1
        ac = torch.where(k >= 0, self.ac[k.clamp(min=0)], torch.ones((), dtype=torch.float64))
        return ac.sqrt().to(t.dtype), (1 - ac).sqrt().to(t.dtype)


def linear_setup(net):
    """The linear path with a velocity network (diffusers' flow_prediction): x0 = x - t v."""
    def model(x, t):
        v, tt = net(x, t), t.reshape(-1, 1)
        return Prediction(x, x - tt * v, x + (1 - tt) * v, 1 - tt, tt, -1.0, 1.0)
    options = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return LinearPath(), model, options, lambda sigma, step: sigma


def vp_setup(net, alphas_cumprod):
    """A discrete VP schedule with a v-prediction network (x0 = alpha x - sigma v stays
    O(1), so float32 rounding stays at 1e-7), its input t = (timestep + 1) / N."""
    path = DiscreteVP(alphas_cumprod)

    def model(x, t):
        v = net(x, t)
        a, s = path.alpha_sigma(t)
        a, s = a.reshape(-1, 1), s.reshape(-1, 1)
        return Prediction(x, a * x - s * v, s * x + a * v, a, s, 0.0, 0.0)
    return path, model, dict(prediction_type="v_prediction"), \
        lambda sigma, step: (step + 1) / N_TRAIN


def run_diffusers(scheduler, net, x, t_of, noises=None):
    """diffusers' sampling loop; returns the sample and the grid in scorelab's t."""
    ts = []
    for k, step in enumerate(scheduler.timesteps):
        t = float(t_of(scheduler.sigmas[k], step))
        ts.append(t)
        out = net(x, torch.full((BATCH,), t))
        extra = {} if noises is None else {"variance_noise": noises[k]}
        x = scheduler.step(out, step, x, **extra).prev_sample
    last = scheduler.sigmas[-1]             # 0, or sigma_min: training timestep 0's level
    ts.append(0.0 if last == 0 else float(t_of(last, 0)))
    return x, torch.tensor(ts)


def setups(name):
    net = TinyNet()
    if name == "linear":
        return net, *linear_setup(net)
    betas = torch.linspace(1e-4, 0.02, N_TRAIN, dtype=torch.float64)
    return net, *vp_setup(net, torch.cumprod(1 - betas, 0))


@pytest.mark.parametrize("path_name", ["vp", "linear"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_equals_diffusers(path_name, order, variant):
    net, path, model, options, t_of = setups(path_name)
    # bh1 with a last step to sigma = 0 is NaN in diffusers (B(h) = h is infinite there;
    # scorelab's step to zero is first order and has no B(h)): compare ending at sigma_min
    final = "zero" if variant == "bh2" else "sigma_min"
    x_T = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(1))
    for steps in (5, 12):
        scheduler = diffusers.UniPCMultistepScheduler(
            num_train_timesteps=N_TRAIN, solver_order=order, solver_type=variant,
            final_sigmas_type=final, **options)
        scheduler.set_timesteps(steps)
        want, ts = run_diffusers(scheduler, net, x_T.clone(), t_of)
        got, nfe = SAMPLERS["unipc"](model, path, x_T.clone(), ts, order=order, variant=variant)
        assert nfe == steps
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("path_name", ["vp", "linear"])
@pytest.mark.parametrize("order,sde", [(1, False), (2, False), (3, False), (1, True), (2, True)])
def test_dpm_solver_pp_equals_diffusers(path_name, order, sde):
    """2M / 3M and the SDE variants, below 15 steps (lower-order final steps) and above.
    (3M SDE is not compared: diffusers' D2 coefficient differs, see the module's docstring;
    ``test_sampling`` proves it on the mixture oracle.)"""
    net, path, model, options, t_of = setups(path_name)
    x_T = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(1))
    for steps in (6, 16):
        scheduler = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=N_TRAIN, solver_order=order, solver_type="midpoint",
            algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++", **options)
        scheduler.set_timesteps(steps)
        g = torch.Generator().manual_seed(7)       # the sampler's generator, one draw a step
        noises = [torch.randn(x_T.shape, generator=g) for _ in range(steps)]
        want, ts = run_diffusers(scheduler, net, x_T.clone(), t_of, noises if sde else None)
        got, nfe = SAMPLERS["dpm_solver"](model, path, x_T.clone(), ts, order=order, sde=sde,
                                          generator=torch.Generator().manual_seed(7))
        assert nfe == steps
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_a_last_step_to_zero_returns_the_x0_prediction():
    """final="zero": the grid ends at t = 0 and the result is the model's x0 at the last
    evaluation; final="eps" stops at eps. Samplers that cannot step to sigma = 0 refuse."""
    path = VPSDE()
    seen = []

    def model(x, t):
        pred = Prediction.from_x0(path, x, t, 0.5 * x)
        seen.append(pred.x0)
        return pred

    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator()
    for name, options in (("dpm_solver", {}), ("unipc", {}), ("ddim", {}), ("edm", {}),
                          ("pc", {"predictor": "ancestral", "generator": gen})):
        seen.clear()
        res = sample(model, path, None, name, steps=6, x_init=x_T, final="zero", **options)
        assert torch.isfinite(res.x).all(), name
        torch.testing.assert_close(res.x, seen[-1], rtol=0, atol=1e-6, msg=name)
        at_eps = sample(model, path, None, name, steps=6, x_init=x_T, **options).x
        assert (at_eps - res.x).abs().max() > 1e-4, name
    with pytest.raises(ValueError, match="needs predictor=ancestral"):
        check_sampler(path, "pc", 10, final="zero")
    with pytest.raises(ValueError, match="method=rk45.*use method=euler or heun"):
        check_sampler(path, "ode", 10, final="zero")
    check_sampler(path, "ode", 10, final="zero", method="euler")
    with pytest.raises(ValueError, match="sampler.final: sampler 'consistency' cannot step"):
        check_sampler(path, "consistency", 2, final="zero")


@pytest.mark.parametrize("grid", ["uniform", "logsnr", "karras"])
def test_final_zero_and_shift_shape_every_grid(grid):
    path = LinearPath()
    ts = make_grid(grid, path, 8, 1e-3, final="zero")
    assert len(ts) == 9 and ts[0] == 1 and ts[-1] == 0 and (ts[1:] < ts[:-1]).all()
    if grid == "uniform":
        torch.testing.assert_close(ts, torch.linspace(1, 0, 9))
    else:       # the rule's 7 intervals from T to eps, then 0
        torch.testing.assert_close(ts[:-1], make_grid(grid, path, 7, 1e-3))
    plain, shifted = make_grid(grid, path, 8, 1e-3), make_grid(grid, path, 8, 1e-3, shift=3.0)
    assert shifted[0] == plain[0] and shifted[-1] == plain[-1]
    torch.testing.assert_close(shifted[1:-1], 3 * plain[1:-1] / (1 + 2 * plain[1:-1]))
    assert (shifted[1:-1] > plain[1:-1]).all()          # s > 1: more steps at high noise


def test_grid_files_give_one_grid_per_step_count(tmp_path):
    path = LinearPath()
    file = tmp_path / "grid.json"
    save_grid_file(file, {2: [1.0, 0.3, 0.0], 3: [1.0, 0.6, 0.2, 0.001]}, sampler="unipc")
    assert json.loads(file.read_text())["sampler"] == "unipc"
    torch.testing.assert_close(make_grid(str(file), path, 3, 1e-3),
                               torch.tensor([1.0, 0.6, 0.2, 0.001]))
    check_sampler(path, "unipc", 2, grid=str(file))
    with pytest.raises(ValueError, match="has no 4-step grid; it has step counts 2, 3"):
        load_grid_file(file, path, 4)
    save_grid_file(file, {2: [1.0, 0.0, 0.3]})
    with pytest.raises(ValueError, match="must be 3 strictly decreasing times from T=1.0"):
        load_grid_file(file, path, 2)
    with pytest.raises(ValueError, match="unknown time grid 'nofile.json'"):
        check_sampler(path, "unipc", 2, grid="nofile.json")


def test_sde_variants_draw_their_noise_from_the_generator():
    path = VPSDE()
    model = lambda x, t: Prediction.from_x0(path, x, t, torch.tanh(x))  # noqa: E731 (short)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))

    def draw(seed):
        return sample(model, path, None, "dpm_solver", steps=8, x_init=x_T, sde=True, order=3,
                      generator=torch.Generator().manual_seed(seed)).x
    torch.testing.assert_close(draw(1), draw(1), rtol=0, atol=0)
    assert (draw(1) - draw(2)).abs().min() > 0


def test_an_optimised_grid_beats_the_default_and_runs_from_its_file(tmp_path):
    """On the mixture oracle (VP), the searched 4-step UniPC grid has a smaller error
    against a fine solution than the log-SNR grid it starts from, on the starts it was
    fitted to and on fresh ones; written to a file, ``sample(grid=FILE)`` uses it."""
    from conftest import oracle
    from scorelab.models.mixture import GaussianMixture
    from scorelab.models.prediction import as_prediction_fn
    from scorelab.sampling import nfe_of, steps_for_nfe, time_grid
    from scorelab.sampling.grid_search import optimise_grid, solution_error

    path = VPSDE()
    model = as_prediction_fn(oracle(GaussianMixture.ring(2, 8, radius=1.0, std=0.1), path), path)

    def fine(x):
        return sample(model, path, None, "unipc", steps=100, x_init=x, order=3).x
    fit = path.prior_sampling((128, 2), generator=torch.Generator().manual_seed(0))
    fresh = path.prior_sampling((128, 2), generator=torch.Generator().manual_seed(1))
    ref_fit, ref_fresh = fine(fit), fine(fresh)
    assert steps_for_nfe(path, "unipc", 4) == 4
    assert nfe_of(path, "edm", 3, max_ratio=float("inf")) == 6
    init = time_grid("unipc", path, 4)
    ts, before, after = optimise_grid(model, path, fit, ref_fit, "unipc", init, sweeps=4)
    assert after < 0.8 * before
    assert solution_error(model, path, fresh, ref_fresh, "unipc", ts) < \
        solution_error(model, path, fresh, ref_fresh, "unipc", init)
    file = tmp_path / "grid.json"
    save_grid_file(file, {4: ts.tolist()}, sampler="unipc")
    got = sample(model, path, None, "unipc", steps=4, x_init=fit, grid=str(file)).x
    torch.testing.assert_close(((got - ref_fit) ** 2).mean().sqrt().item(), after)
