"""Reverse variances and the variational bounds against closed forms and the mixture oracle:
the discrete bound of Gaussian data with the exact denoiser is the sum of Gaussian KLs; on
the mixture both bounds lie above the exact NLL, the discrete one approaching it as its
steps grow; Analytic-DPM's variance lies between DDPM's two and bounds better than both;
learned variances start inside them and, trained, bound better than either."""

import math
from types import SimpleNamespace

import pytest
import torch

from scorelab.likelihood.bound import continuous_elbo, discrete_vlb
from scorelab.likelihood.reverse_step import (X0Variance, discretized_gaussian_nll,
                                              reverse_log_variance, step_coefficients)
from scorelab.metrics.registry import build_metric
from scorelab.models.heads import EpsHead
from scorelab.models.mixture import GaussianMixture
from scorelab.models.score import ScoreModel
from scorelab.nets.mlp import MLP
from scorelab.paths.interpolants import LinearPath
from scorelab.paths.sde import VESDE, VPSDE
from scorelab.sampling import sample
from scorelab.sampling.grids import make_grid
from scorelab.training.losses import DSMLoss, IncompatibleError, StepHistory

D, MU, S = 16, 0.3, 0.5


def _gaussian():
    return GaussianMixture(torch.full((1, D), MU), torch.tensor([S]))


def _closed_form(path, ts, variance):
    """The discrete bound per dimension of N(MU, S^2 I) with the exact denoiser, in closed
    form: prior KL, each L_t = 1/2 [log(v / p) - 1 + p / v + c_0^2 V / v] with V = Var[x0|x_t],
    and the decoder's expected -log N(x0; x0_hat, v) = 1/2 [log(2 pi v) + V / v]."""
    a, sg = (v.double() for v in path.alpha_sigma(ts.double()))
    total = 0.5 * (-torch.log(sg[0] ** 2) - 1 + sg[0] ** 2 + a[0] ** 2 * (MU ** 2 + S ** 2))
    for k in range(len(ts) - 1):
        _, c0, post, upper = step_coefficients(a[k + 1], sg[k + 1], a[k], sg[k])
        V = S * S * sg[k] ** 2 / (a[k] ** 2 * S * S + sg[k] ** 2)
        v = {"posterior": post, "upper": upper, "analytic": post + c0 * c0 * V}[variance]
        total = total + 0.5 * (torch.log(v / post) - 1 + post / v + c0 * c0 * V / v)
    V = S * S * sg[-1] ** 2 / (a[-1] ** 2 * S * S + sg[-1] ** 2)
    v = {"posterior": post, "upper": sg[-1] ** 2, "analytic": V}[variance]
    return float(total + 0.5 * (math.log(2 * math.pi) + torch.log(v) + V / v))


@pytest.mark.parametrize("variance", ["posterior", "upper", "analytic"])
def test_discrete_bound_of_gaussian_data_is_the_closed_form_sum_of_kls(variance):
    gm, path = _gaussian(), VPSDE()
    model = gm.prediction_fn(path)
    x0 = gm.sample(3000, torch.Generator().manual_seed(1))[0]
    ts = make_grid("uniform", path, 12, 1e-3)
    m = X0Variance.estimate(model, path, x0, ts, generator=torch.Generator().manual_seed(3)) \
        if variance == "analytic" else None
    res = discrete_vlb(model, path, x0, ts, variance, m, generator=torch.Generator().manual_seed(2))
    got = res.total / D
    stderr = float(got.std() / math.sqrt(len(got)))
    assert float(got.mean()) == pytest.approx(_closed_form(path, ts, variance), abs=4 * stderr)
    assert torch.allclose(res.total, res.prior + res.diffusion + res.decoder)
    assert res.per_step.shape == (3000, 12)


def test_x0_variance_of_gaussian_data_is_its_posterior_variance():
    """Analytic-DPM's moment from the exact denoiser: m_t = Var[x0 | x_t] = s^2 sigma^2 /
    (alpha^2 s^2 + sigma^2), including where alpha = 0 (the data's variance)."""
    gm, path = _gaussian(), LinearPath()
    x0 = gm.sample(4000, torch.Generator().manual_seed(0))[0]
    ts = torch.tensor([1.0, 0.7, 0.3, 0.05])
    m = X0Variance.estimate(gm.prediction_fn(path), path, x0, ts,
                            generator=torch.Generator().manual_seed(1))
    a, sg = path.alpha_sigma(ts)
    exact = S * S * sg ** 2 / (a ** 2 * S * S + sg ** 2)
    assert torch.allclose(m(ts).float(), exact, rtol=0.06, atol=2e-3)
    mid = m(torch.tensor([0.5]))           # interpolated between 0.3 and 0.7
    assert float(m(torch.tensor([0.3]))) < float(mid) < float(m(torch.tensor([0.7])))


@pytest.fixture(scope="module")
def ring():
    gm = GaussianMixture.ring(2, 6, 0.7, 0.15)
    return gm, gm.sample(3000, torch.Generator().manual_seed(4))[0]


def test_discrete_bound_is_above_the_exact_nll_and_approaches_it_with_more_steps(ring):
    """On the mixture with the exact denoiser, the bound (analytic variance: the exact
    Gaussian step's best) is >= the exact NLL and its gap shrinks as the chain refines."""
    gm, x0 = ring
    path = VPSDE()
    model = gm.prediction_fn(path)
    exact = float(-gm.log_prob(x0).mean()) / 2
    gaps = []
    for steps in (8, 32, 128):
        ts = make_grid("uniform", path, steps, 1e-3)
        m = X0Variance.estimate(model, path, x0[:1000], ts,
                                generator=torch.Generator().manual_seed(5))
        got = discrete_vlb(model, path, x0, ts, "analytic", m,
                           generator=torch.Generator().manual_seed(6)).total / 2
        stderr = float(got.std() / math.sqrt(len(got)))
        gaps.append(float(got.mean()) - exact)
        assert gaps[-1] > -3 * stderr
    assert gaps[0] > gaps[1] > gaps[2]


def test_continuous_elbo_with_the_exact_denoiser_is_the_exact_nll(ring):
    """VDM's ELBO with the exact x0_hat: >= the exact NLL, and equal to it up to the prior
    mismatch (tiny at T = 1 on VP, 0 on the linear path) and the Monte Carlo error -- the
    bound's only slack is the model's, which the exact denoiser does not have."""
    gm, x0 = ring
    exact = float(-gm.log_prob(x0).mean()) / 2
    for path in (VPSDE(), LinearPath()):
        got = continuous_elbo(gm.prediction_fn(path), path, x0, n_times=8,
                              generator=torch.Generator().manual_seed(7)).total / 2
        stderr = float(got.std() / math.sqrt(len(got)))
        assert abs(float(got.mean()) - exact) < max(4 * stderr, 0.01), type(path).__name__


@pytest.mark.parametrize("path", [VPSDE(), VESDE(sigma_max=5.0), LinearPath()],
                         ids=["vp", "ve", "linear"])
def test_analytic_variance_is_between_posterior_and_upper_and_bounds_best(ring, path):
    gm, x0 = ring
    model = gm.prediction_fn(path)
    ts = make_grid("uniform", path, 10, path.sampling_eps)
    m = X0Variance.estimate(model, path, x0[:1000], ts, generator=torch.Generator().manual_seed(8))
    a, sg = path.alpha_sigma(ts)
    for k in range(len(ts) - 1):
        _, c0, post, upper = step_coefficients(a[k + 1], sg[k + 1], a[k], sg[k])
        v = torch.exp(reverse_log_variance("analytic", post, upper, c_0=c0, x0_variance=m(ts[k])))
        assert post * (1 - 1e-6) <= v <= upper * (1 + 1e-6), k
    bounds = {kind: float(discrete_vlb(model, path, x0[:1000], ts, kind, m,
                                       generator=torch.Generator().manual_seed(9)).total.mean())
              for kind in ("posterior", "upper", "analytic")}
    assert bounds["analytic"] < min(bounds["posterior"], bounds["upper"]), bounds


def test_learned_variance_interpolates_in_log_space_between_the_two():
    post, upper = torch.tensor(0.01), torch.tensor(0.04)
    for f, want in ((0.0, 0.01), (1.0, 0.04), (0.5, 0.02)):
        v = torch.exp(reverse_log_variance("learned", post, upper, torch.tensor(f)))
        assert float(v) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="learn_sigma"):
        reverse_log_variance("learned", post, upper, None)


def test_learned_variance_at_initialisation_lies_within_posterior_and_upper():
    """A learn_sigma MLP and UNet start with variance channels in [-1, 1] (f in [0, 1]), so
    every step's learned variance lies in [posterior, upper]."""
    from scorelab.nets.unet import UNet
    path = VPSDE()
    nets = [MLP((2,), width=16, depth=1, learn_sigma=True),
            UNet((1, 8, 8), channels=8, channel_mult=(1,), num_res_blocks=1,
                 attn_resolutions=(), learn_sigma=True)]
    for net in nets:
        model = ScoreModel(net, EpsHead(), path)
        x = torch.randn((4,) + net.data_shape)
        pred = model.prediction(x, torch.full((4,), 0.5))
        assert pred.var_frac.shape == x.shape and pred.x0.shape == x.shape
        assert ((pred.var_frac >= 0) & (pred.var_frac <= 1)).all()
        _, _, post, upper = step_coefficients(*path.alpha_sigma(torch.tensor(0.4)),
                                              *path.alpha_sigma(torch.tensor(0.5)))
        v = torch.exp(reverse_log_variance("learned", post, upper, pred.var_frac))
        assert (v >= post * (1 - 1e-6)).all() and (v <= upper * (1 + 1e-6)).all()


def test_discretized_decoder_gives_the_256_bins_probability_one():
    levels = torch.linspace(-1, 1, 256)
    for mean, log_var in ((0.1, -4.0), (-0.97, -9.0), (0.999, -2.0)):
        p = torch.exp(-discretized_gaussian_nll(levels, torch.tensor(mean),
                                                torch.tensor(log_var)))
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-4)


def _mlp_model(path, learn_sigma=True):
    torch.manual_seed(0)
    return ScoreModel(MLP((2,), width=32, depth=2, learn_sigma=learn_sigma), EpsHead(), path)


def _vlb_term(loss, model, x0):
    """The loss's vlb term alone at its own draws of t and x_t."""
    gen = torch.Generator().manual_seed(0)
    t, alpha, sigma = loss.draw(model.path, x0.shape[0], x0.device, gen)
    c = tuple(v[:, None] for v in (alpha, sigma, *model.path.derivatives(t)))
    x_t = alpha[:, None] * x0 + sigma[:, None] * torch.randn(x0.shape, generator=gen)
    out, frac = model.outputs(x_t, t, None, c)
    return loss.vlb_term(model, out, frac, x0, x_t, t, c).mean()


def test_hybrid_vlb_term_reaches_only_the_variance_and_vlb_alone_trains_both():
    """loss=hybrid (simple_weight > 0): the vlb term's gradient reaches the variance
    channels' output rows only (the mean is stop-gradient); loss=vlb: both."""
    path = VPSDE()
    x0 = torch.randn(16, 2) * 0.5
    for simple, reaches_mean in ((1.0, False), (0.0, True)):
        model = _mlp_model(path)
        loss = DSMLoss(simple_weight=simple, vlb_weight=1.0)
        loss.decoder_bins = None
        _vlb_term(loss, model, x0).backward()
        grad = model.backbone.out[-1].weight.grad          # rows: 2 mean, then 2 variance
        assert bool(grad[:2].abs().sum() > 0) == reaches_mean
        assert grad[2:].abs().sum() > 0
    with pytest.raises(IncompatibleError, match="learn_sigma"):
        DSMLoss(vlb_weight=0.001).check_model(_mlp_model(path, learn_sigma=False))


def test_importance_sampler_is_uniform_until_warm_then_follows_the_second_moment():
    h = StepHistory(4, size=2)
    k, w = h.draw(1000, torch.Generator().manual_seed(0))
    assert torch.allclose(w, torch.ones_like(w)) and set(k.tolist()) == {0, 1, 2, 3}
    for step, value in ((0, 1.0), (1, 1.0), (2, 1.0), (3, 3.0)):
        h.update(torch.tensor([step, step]), torch.tensor([value, value]))
    assert h.warm
    p = h.probabilities()
    assert float(p[3]) == pytest.approx(0.5 * (1 - h.UNIFORM) + h.UNIFORM / 4)
    k, w = h.draw(20000, torch.Generator().manual_seed(1))
    # importance weights keep the sum's estimate unbiased: E[w L_k] = mean_k L_k
    values = torch.tensor([1.0, 1.0, 1.0, 3.0])
    assert float((w * values[k]).mean()) == pytest.approx(1.5, rel=0.03)
    state = h.state_dict()
    h2 = StepHistory(4, size=2)
    h2.load_state_dict(state)
    assert torch.equal(h2.probabilities(), p)


def test_ancestral_sampler_variances_and_their_refusals(ring):
    gm, _ = ring
    path = VPSDE()
    model = gm.prediction_fn(path)
    gen = torch.Generator().manual_seed(0)
    base = dict(sampler="pc", steps=20, predictor="ancestral", corrector="none")
    with pytest.raises(ValueError, match="learn_sigma"):
        sample(model, path, (8, 2), generator=gen, variance="learned", **base)
    with pytest.raises(ValueError, match="x0 variance"):
        sample(model, path, (8, 2), generator=gen, variance="analytic", **base)
    with pytest.raises(ValueError, match="predictor=ancestral"):
        sample(model, path, (8, 2), sampler="pc", steps=20, predictor="euler_maruyama",
               variance="upper")
    with pytest.raises(ValueError, match="DDIM variance"):
        sample(model, path, (8, 2), sampler="ddim", steps=20, variance="upper")
    ts = make_grid("uniform", path, 20, path.sampling_eps)
    m = X0Variance.estimate(model, path, gm.sample(500, torch.Generator().manual_seed(1))[0], ts)
    for kw in (dict(variance="upper", **base), dict(variance="analytic", x0_variance=m, **base),
               dict(sampler="ddim", steps=20, variance="analytic", x0_variance=m, eta=0.0)):
        x = sample(model, path, (64, 2), generator=torch.Generator().manual_seed(2), **kw).x
        assert torch.isfinite(x).all() and x.abs().max() < 3


def test_vlb_and_elbo_metrics_on_the_mixture_report_their_terms_and_gap(ring):
    """Through the registry with the exact model: the terms sum to the total, the gap to the
    exact NLL is >= 0 within the Monte Carlo error, and the per-step terms are listed."""
    gm, x0 = ring
    x = x0[:40]
    data = SimpleNamespace(val_set=list(zip(x, torch.zeros(40))), mixture=gm,
                           train_set=list(zip(x0[1000:1400], torch.zeros(400))))
    path = VPSDE()
    model = SimpleNamespace(prediction_fn=lambda y: gm.prediction_fn(path), path=path,
                            learns_variance=False)
    module = SimpleNamespace(device=torch.device("cpu"), latent=None, model=model,
                             is_image=False, conditional=False,
                             x0_variance=lambda times, num, seed, data: X0Variance.estimate(
                                 gm.prediction_fn(path), path, x0[1000:1400], times))
    for name, options in (("vlb", {"steps": 100, "variance": "analytic"}),
                          ("elbo", {"n_times": 4})):
        metric = build_metric(name, {"num_examples": 40, "chunk": 16, **options})
        values, done, wanted, settings = metric.run(module, data, 0, 0, 1, None, None)
        key = f"{name}_nats_per_dim"
        assert done == wanted == 40 and metric.key == key
        terms = [v for k, v in values.items() if k.startswith(key + "_") and k not in
                 (f"{key}_stderr", f"{key}_gap", f"{key}_gap_stderr", f"{key}_per_step")]
        assert len(terms) == 3 and sum(terms) == pytest.approx(values[key])
        assert values[f"{key}_gap"] > -3 * values[f"{key}_gap_stderr"] - 1e-3
        assert values[f"{key}_gap"] < 0.1 + 3 * values[f"{key}_gap_stderr"], name
    assert len(values.get("elbo_nats_per_dim_per_step", [])) == 0


def test_bounds_are_the_same_bits_on_one_and_on_two_processes(ring):
    """Each process bounds its chunks (noise from the chunk's index) and all_gathers them:
    rank 0 of two, given rank 1's rows, reports exactly the one-process values."""
    gm, x0 = ring
    x = x0[:40]
    data = SimpleNamespace(val_set=list(zip(x, torch.zeros(40))), mixture=gm)
    path = VPSDE()
    model = SimpleNamespace(prediction_fn=lambda y: gm.prediction_fn(path), path=path,
                            learns_variance=False)
    module = SimpleNamespace(device=torch.device("cpu"), latent=None, model=model,
                             is_image=False, conditional=False)
    for name, options in (("vlb", {"steps": 20}), ("elbo", {"n_times": 2})):
        def metric():
            return build_metric(name, {"num_examples": 40, "chunk": 10, **options})
        one = metric().run(module, data, 3, 0, 1, None, None)[0]
        sent = []

        def record(t):                       # rank 1: keep what it sends
            sent.append(t.clone())
            return torch.stack([t, t])
        metric().run(module, data, 3, 1, 2, record, None)
        received = iter(sent)

        def gather(t):                       # rank 0: its rows and rank 1's
            return torch.stack([t, next(received)])
        two = metric().run(module, data, 3, 0, 2, gather, None)[0]
        assert two == one, name


def test_cli_refuses_variances_and_losses_the_model_cannot_take(tmp_path, capsys):
    """One line at start-up: the hybrid loss without learned channels, variance=learned on a
    model without them, DDIM with the ancestral step's upper variance."""
    from conftest import refused_at_start
    refused_at_start("train", ["experiment=gmm_vp_eps", "loss=hybrid"], "learn_sigma",
                     tmp_path / "r1", capsys)
    refused_at_start("train", ["experiment=gmm_vp_eps", "sampler.variance=learned"],
                     "variance=learned", tmp_path / "r2", capsys)
    refused_at_start("train", ["experiment=gmm_vp_eps", "sampler=ddim",
                               "sampler.variance=upper"], "DDIM variance", tmp_path / "r3",
                     capsys)


@pytest.mark.slow
def test_cli_hybrid_training_learned_and_analytic_sampling_and_the_bounds(tmp_path):
    """train.py loss=hybrid backbone.learn_sigma=true; sample.py with the learned and the
    analytic variance; evaluate.py metrics=[vlb,elbo,bpd] in one metrics.json."""
    import json

    from conftest import run
    out = tmp_path / "hybrid"
    run("train.py", "experiment=gmm_vp_eps", "loss=hybrid", "backbone.learn_sigma=true",
        "backbone.width=32", "backbone.depth=1", "data.n_samples=400", "trainer.max_steps=30",
        "callbacks=default", "sampler.steps=10", "sampler.variance=learned", "num_samples=20",
        f"hydra.run.dir={out}", cwd=tmp_path)
    ckpt = out / "checkpoints/last.ckpt"
    for variance in ("learned", "analytic"):
        run("sample.py", f"ckpt={ckpt}", "sampler=ancestral", "sampler.steps=10",
            f"sampler.variance={variance}", "num_samples=16",
            f"hydra.run.dir={tmp_path / variance}", cwd=tmp_path)
        info = json.loads((tmp_path / variance / "sampling.json").read_text())
        assert info["sampler"]["variance"] == variance
    run("evaluate.py", f"ckpt={ckpt}", "metrics=[vlb,elbo,bpd]", "num_samples=0",
        "metrics.vlb.num_examples=8", "metrics.vlb.steps=20", "metrics.elbo.num_examples=8",
        "metrics.elbo.n_times=2", "metrics.bpd.num_examples=8", "metrics.bpd.rtol=1e-3",
        "metrics.bpd.atol=1e-3", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    metrics = json.loads((tmp_path / "e/metrics.json").read_text())
    for key in ("vlb_nats_per_dim", "elbo_nats_per_dim", "nll_nats_per_dim",
                "vlb_nats_per_dim_gap", "elbo_nats_per_dim_reconstruction"):
        assert math.isfinite(metrics[key]), key
    assert metrics["vlb_nats_per_dim_settings"]["variance"] == "learned"
    assert len(metrics["vlb_nats_per_dim_per_step"]) == 20


@pytest.mark.slow
def test_trained_learned_variance_bounds_better_than_either_fixed_one():
    """A tiny learn_sigma MLP trained with the hybrid loss (lambda 0.03 to learn the
    variance in 2,000 steps) on a tight ring: on its own 1,000-step chain its learned
    variances give a lower bound than DDPM's posterior and upper variances, having learned
    the posterior's side near the data and the upper's elsewhere (same draws for all)."""
    torch.manual_seed(0)
    gm = GaussianMixture.ring(2, 6, 0.7, 0.03)
    path = VPSDE()
    model = ScoreModel(MLP((2,), width=64, depth=2, learn_sigma=True), EpsHead(), path)
    loss = DSMLoss(vlb_weight=0.03)
    loss.decoder_bins = None
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(2000):
        value = loss(model, gm.sample(256)[0])
        opt.zero_grad()
        value.backward()
        opt.step()
    model.eval()
    x0 = gm.sample(500, torch.Generator().manual_seed(1))[0]
    ts = make_grid("uniform", path, path.N, 1e-3)
    bounds = {kind: float(discrete_vlb(model.prediction_fn(), path, x0, ts, kind,
                                       generator=torch.Generator().manual_seed(2)).total.mean())
              for kind in ("posterior", "upper", "learned")}
    assert bounds["learned"] < min(bounds["posterior"], bounds["upper"]), bounds
