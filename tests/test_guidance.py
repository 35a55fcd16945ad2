"""Guidance against the Gaussian-mixture oracle: its components are the classes, so the exact
conditional prediction, the marginal (null label) and the exact noisy classifier are known."""

import math

import pytest
import torch

from conftest import all_sdes
from scorelab.models.conditioning import NULL_LABEL, drop_labels, null_labels
from scorelab.guidance.predictions import (Autoguidance, ClassifierFree, ClassifierGuidance, NoGuidance,
                               noise_level)
from scorelab.models.heads import EDMHead, EpsHead, ScoreHead, VHead, VelocityHead, X0Head
from scorelab.models.mixture import GaussianMixture
from scorelab.nets.dit import DiT
from scorelab.nets.mlp import MLP
from scorelab.nets.unet import UNet
from scorelab.models.prediction import Prediction
from scorelab.sampling import sample

N = 2000
CLASS = 3
SDES = ["vp", "ve", "linear"]
SAMPLERS = {          # name -> (sampler, options, steps), each exact on the mixture
    "pc": ("pc", {"predictor": "euler_maruyama"}, 300),
    "ddim": ("ddim", {"grid": "quadratic"}, 100),
    "dpm_solver": ("dpm_solver", {}, 30),
    "flow_ode": ("ode", {"method": "heun", "grid": "quadratic"}, 100),
}


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.ring(2, 8, radius=1.0, std=0.1, weights=torch.arange(1.0, 9.0))


def energy_distance(a, b):
    return (2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean()
            - torch.cdist(b, b).mean()).item()


def draw(model, path, sampler, seed=0):
    name, options, steps = SAMPLERS[sampler]
    if path.alpha_vanishes and name == "pc":
        options = {**options, "diffusion": "sigma"}         # g(T) is infinite there
    return sample(model, path, (N, 2), sampler=name, steps=steps,
                  generator=torch.Generator().manual_seed(seed), **options).x


def component(gmm, k, n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return gmm.means[k] + gmm.stds[k] * torch.randn(n, 2, generator=g)


def floor(gmm):
    return energy_distance(component(gmm, CLASS, seed=1), component(gmm, CLASS, seed=2))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("sde_name", SDES)
def test_w1_reproduces_the_requested_component(gmm, sde_name, sampler):
    """CFG at w = 1 and classifier guidance (exact posterior, unconditional base) at w = 1
    both sample p(x | y): the requested component alone, with its spread."""
    path = all_sdes()[sde_name]
    y = torch.full((N,), CLASS)
    predict = gmm.conditional_prediction_fn(path)
    truth = component(gmm, CLASS)
    for guidance in (ClassifierFree(1.0), ClassifierGuidance(gmm.classifier_fn(path), 1.0)):
        x = draw(guidance.prediction_fn(predict, path, y, conditional=guidance.kind == "cfg"),
                 path, sampler)
        assert (gmm.assign(x) == CLASS).float().mean() > 0.995
        assert energy_distance(x, truth) < 6 * max(floor(gmm), 1e-3), guidance
        spread = (x - gmm.means[CLASS]).std().item()
        tol = 0.2 if sampler == "ddim" else 0.1                  # DDIM at 100 steps
        assert spread == pytest.approx(0.1, rel=tol)


@pytest.mark.parametrize("sde_name", SDES)
def test_cfg_samples_the_tilted_gaussian(sde_name):
    """p(x | y)^w p(x)^(1 - w) for Gaussians of equal covariance is N(w mu_c + (1 - w) mu_u,
    S), and, the tilt commuting with the noising there, CFG samples it exactly."""
    path = all_sdes()[sde_name]
    cond = GaussianMixture(torch.tensor([[1.0, 0.5]]), torch.tensor([[0.2, 0.3]]))
    uncond = GaussianMixture(torch.tensor([[-0.5, 0.0]]), torch.tensor([[0.2, 0.3]]))

    def predict(x, t, y):
        c = cond.conditional_prediction_fn(path)(x, t)
        u = uncond.conditional_prediction_fn(path)(x, t)
        pick = (y != NULL_LABEL).reshape(-1, 1)
        return Prediction(x, torch.where(pick, c.x0, u.x0), torch.where(pick, c.eps, u.eps),
                          c.alpha, c.sigma, c.d_alpha, c.d_sigma)

    w = 3.0
    model = ClassifierFree(w).prediction_fn(predict, path, torch.zeros(N, dtype=torch.long))
    x = draw(model, path, "dpm_solver")
    mean = w * cond.means[0] + (1 - w) * uncond.means[0]
    assert torch.allclose(x.mean(0), mean, atol=0.03)
    assert torch.allclose(x.std(0), cond.stds[0], rtol=0.06)


@pytest.mark.parametrize("sde_name", SDES)
def test_larger_w_concentrates_on_the_component(gmm, sde_name):
    path = all_sdes()[sde_name]
    y = torch.full((N,), 0)                  # the lightest component (weight 1/36)
    predict = gmm.conditional_prediction_fn(path)
    for guidance in (ClassifierFree(3.0), ClassifierGuidance(gmm.classifier_fn(path), 3.0)):
        x = draw(guidance.prediction_fn(predict, path, y, conditional=guidance.kind == "cfg"),
                 path, "dpm_solver")
        assert (gmm.assign(x) == 0).float().mean() > 0.999
        # sharper than the component itself (tilted towards its centre)
        assert (x - gmm.means[0]).std().item() < 0.1


def test_cfg_is_one_batched_forward_pass_and_skips_it_at_w1(gmm):
    path = all_sdes()["vp"]
    calls = []
    base = gmm.conditional_prediction_fn(path)

    def predict(x, t, y):
        calls.append(x.shape[0])
        return base(x, t, y)

    x, t, y = torch.randn(5, 2), torch.full((5,), 0.5), torch.arange(5)
    ClassifierFree(2.0).prediction_fn(predict, path, y)(x, t)
    assert calls == [10]
    calls.clear()
    ClassifierFree(1.0).prediction_fn(predict, path, y)(x, t)
    assert calls == [5]


def test_guidance_interval_is_in_noise_level_not_steps(gmm):
    """w applies where sigma / alpha is in [sigma_min, sigma_max], whatever the grid."""
    path = all_sdes()["vp"]
    g = ClassifierFree(4.0, sigma_min=0.5, sigma_max=2.0)
    t = torch.linspace(0.01, 1.0, 101)
    s = noise_level(path, t)
    w = g.weight(path, t)
    assert torch.equal(w == 4.0, (s >= 0.5) & (s <= 2.0)) and ((w == 1) | (w == 4)).all()
    # outside the interval the guided prediction is the conditional one, bit for bit
    predict = gmm.conditional_prediction_fn(path)
    x, y = torch.randn(6, 2), torch.arange(6)
    tt = torch.full((6,), 0.02)               # s ~ 0.03 < sigma_min
    out = g.prediction_fn(predict, path, y)(x, tt)
    assert torch.equal(out.x0, predict(x, tt, y).x0)
    # at alpha = 0 the level is infinite: inside only for sigma_max = inf
    lin = all_sdes()["linear"]
    one = torch.ones(1)
    assert ClassifierFree(4.0).weight(lin, one).item() == 4.0
    assert ClassifierFree(4.0, sigma_max=80.0).weight(lin, one).item() == 1.0


@pytest.mark.parametrize("head", [EpsHead(), X0Head(), VHead(), ScoreHead(), VelocityHead(),
                                  EDMHead(0.5)], ids=lambda h: h.name)
@pytest.mark.parametrize("sde_name", ["vp", "ve", "linear"])
def test_guidance_is_the_same_in_every_parametrisation(head, sde_name):
    """Guiding the prediction = guiding each head's raw output with the same rule: CFG and
    autoguidance are affine in the output; classifier guidance shifts the score."""
    path = all_sdes()[sde_name]
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    t = torch.full((8,), 0.4)
    c = path.coefficients(t, like=x)
    out_c, out_u, grad = torch.randn(8, 3), torch.randn(8, 3), torch.randn(8, 3)
    cond, uncond = (Prediction.from_head(head, o, x, c) for o in (out_c, out_u))
    w = torch.full((8,), 2.5)
    guided = cond.guide(uncond, w)
    direct = Prediction.from_head(head, out_u + 2.5 * (out_c - out_u), x, c)
    for attr in ("x0", "eps", "score", "v", "velocity"):
        assert torch.allclose(getattr(guided, attr), getattr(direct, attr), atol=1e-4), attr
    shifted = cond.shift_score(grad)
    alpha, sigma = c[0], c[1]
    assert torch.allclose(shifted.score, cond.score + grad, atol=1e-4)
    assert torch.allclose(shifted.eps, cond.eps - sigma * grad, atol=1e-5)
    assert torch.allclose(shifted.x0, cond.x0 + sigma ** 2 / alpha * grad, atol=1e-4)
    assert torch.allclose(alpha * shifted.x0 + sigma * shifted.eps, x, atol=1e-4)


def test_classifier_gradient_under_no_grad_matches_the_exact_posterior(gmm):
    """grad log p_t(y | x) = score(x | y) - score(x); taken by autograd under no_grad."""
    path = all_sdes()["vp"]
    g = ClassifierGuidance(gmm.classifier_fn(path), 2.0)
    x, t = torch.randn(16, 2), torch.full((16,), 0.3)
    y = torch.arange(16) % 8
    with torch.no_grad():
        grad = g.log_prob_grad(x, t, y)
    predict = gmm.conditional_prediction_fn(path)
    exact = predict(x, t, y).score - predict(x, t, null_labels(16)).score
    assert torch.allclose(grad, exact, atol=1e-4)
    # and at w: score + w grad (unconditional base), score(x | y) + (w - 1) grad (conditional)
    with torch.no_grad():
        a = g.prediction_fn(predict, path, y, conditional=False)(x, t).score
        b = g.prediction_fn(predict, path, y, conditional=True)(x, t).score
    base = predict(x, t, null_labels(16)).score
    assert torch.allclose(a, base + 2 * exact, atol=1e-4)
    assert torch.allclose(b, base + 2 * exact, atol=1e-4)


def test_autoguidance_formula_and_w1(gmm):
    """D_guide + w (D - D_guide), the guide a broader mixture (a 'weaker model')."""
    path = all_sdes()["vp"]
    weak = GaussianMixture(gmm.means, gmm.stds * 2, gmm.weights)
    main, guide = gmm.conditional_prediction_fn(path), weak.conditional_prediction_fn(path)
    x, t, y = torch.randn(8, 2), torch.full((8,), 0.5), torch.arange(8)
    d, d_g = main(x, t, y), guide(x, t, y)
    out = Autoguidance(guide, 3.0).prediction_fn(main, path, y)(x, t)
    assert torch.allclose(out.x0, d_g.x0 + 3 * (d.x0 - d_g.x0), atol=1e-6)
    assert torch.equal(Autoguidance(guide, 1.0).prediction_fn(main, path, y)(x, t).x0, d.x0)
    # guided away from the broader guide: samples sharper than the data's components
    xs = draw(Autoguidance(guide, 2.0).prediction_fn(main, path, torch.full((N,), CLASS)),
              path, "dpm_solver")
    assert (gmm.assign(xs) == CLASS).float().mean() > 0.995
    assert (xs - gmm.means[CLASS]).std().item() < 0.1


def test_bad_guidance_values_and_missing_labels(gmm):
    for kwargs, match in (({"scale": -1.0}, "scale"), ({"scale": "abc"}, "scale"),
                          ({"sigma_min": 2.0, "sigma_max": 1.0}, "sigma_min"),
                          ({"scale": math.nan}, "scale")):
        with pytest.raises(ValueError, match=match):
            ClassifierFree(**kwargs)
    path = all_sdes()["vp"]
    with pytest.raises(ValueError, match="conditional"):
        ClassifierFree(2.0).prediction_fn(gmm.conditional_prediction_fn(path), path, None)
    with pytest.raises(ValueError, match="labels"):
        ClassifierGuidance(gmm.classifier_fn(path)).prediction_fn(
            gmm.conditional_prediction_fn(path), path, None)
    assert NoGuidance().scale == 1.0


def test_label_dropout_and_the_one_null_label():
    """drop_labels uses NULL_LABEL; every backbone maps it (and y=None) to its null row."""
    y = torch.arange(10000) % 10
    dropped = drop_labels(y, 0.25, torch.Generator().manual_seed(0))
    share = (dropped == NULL_LABEL).float().mean().item()
    assert share == pytest.approx(0.25, abs=0.02)
    assert torch.equal(dropped[dropped != NULL_LABEL], y[dropped != NULL_LABEL])
    assert torch.equal(drop_labels(y, 0.0), y)
    nets = [MLP((2,), width=16, depth=1, emb_dim=8, num_classes=4),
            UNet((1, 8, 8), channels=8, channel_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(), num_classes=4, init_scale=1.0),
            DiT((1, 8, 8), patch=4, hidden=16, depth=1, heads=2, num_classes=4)]
    for net in nets:
        net.eval()                                  # no dropout
        for p in net.parameters():                  # make every layer matter
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn((3,) + tuple(net.data_shape))
        lab = torch.full((3,), 10.0)
        none = net(x, lab, None)
        assert torch.equal(net(x, lab, null_labels(3)), none), type(net).__name__
        assert not torch.allclose(net(x, lab, torch.zeros(3, dtype=torch.long)), none)


def test_trained_conditional_mlp_with_label_dropout(gmm, one_thread):
    """A class-conditional MLP trained by flow matching with label dropout (p_uncond = 0.2,
    2,000 seeded steps) gives, through its one network, both branches of CFG: at w = 1 the
    requested component (measured: 99.6% of samples in it, energy distance 7.7x the floor),
    at w = 3 all of them, pushed outwards from the marginal; its null-label branch samples
    the marginal (2.4% in the component of weight 2.8%), and with the exact classifier the
    component (100%)."""
    from scorelab.models.heads import get_head
    from scorelab.training.losses import DSMLoss
    from scorelab.paths.interpolants import LinearPath
    from scorelab.models.score import ScoreModel

    path, steps, lr = LinearPath(), 2000, 3e-3
    torch.manual_seed(0)
    model = ScoreModel(MLP((2,), width=128, depth=3, emb_dim=64, num_classes=8),
                       get_head("velocity"), path)
    loss_fn = DSMLoss(weighting="velocity")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = gmm.sample(256, gen)
        loss = loss_fn(model, x, drop_labels(y, 0.2, gen), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()
    y = torch.full((N,), 0)                      # the lightest component (weight 1/36)
    truth = component(gmm, 0)
    with torch.no_grad():
        x1 = draw(ClassifierFree(1.0).prediction_fn(model.prediction, path, y), path, "dpm_solver")
        x3 = draw(ClassifierFree(3.0).prediction_fn(model.prediction, path, y), path, "dpm_solver")
        xc = draw(ClassifierGuidance(gmm.classifier_fn(path), 1.0).prediction_fn(
            model.prediction, path, y, conditional=False), path, "dpm_solver")
        xu = draw(NoGuidance().prediction_fn(model.prediction, path, y, conditional=False),
                  path, "dpm_solver")
    share = {k: (gmm.assign(v) == 0).float().mean().item()
             for k, v in (("w1", x1), ("w3", x3), ("clf", xc), ("uncond", xu))}
    assert share["w1"] > 0.98 and share["w3"] > 0.99 and share["clf"] > 0.95, share
    assert share["uncond"] < 0.1, share          # the null label is the marginal (1/36)
    assert energy_distance(x1, truth) < 10 * floor(gmm)
    # guided away from the marginal: the samples move outwards, as with the exact oracle
    # (measured |mean| 0.99 at w = 1, 1.17 at w = 3; oracle 1.17)
    assert x3.mean(0).norm() > x1.mean(0).norm() + 0.1


def test_learned_variance_channels_never_reach_the_guidance():
    """DiT with learn_sigma outputs 2C channels; the prediction (and so every guidance) sees
    the C mean channels only, and CFG's rule holds on them."""
    from scorelab.models.heads import get_head
    from scorelab.models.score import ScoreModel
    path = all_sdes()["vp"]
    net = DiT((1, 8, 8), patch=4, hidden=16, depth=1, heads=2, num_classes=4, learn_sigma=True)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    model = ScoreModel(net, get_head("v"), path).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5), torch.tensor([1, 2])
    with torch.no_grad():
        guided = ClassifierFree(3.0).prediction_fn(model.prediction, path, y)(x, t)
        cond, uncond = model.prediction(x, t, y), model.prediction(x, t, null_labels(2))
    assert guided.x0.shape == x.shape
    assert torch.allclose(guided.x0, uncond.x0 + 3 * (cond.x0 - uncond.x0), atol=1e-5)


def test_captions_naming_a_component_draw_it_under_cfg(gmm, sde_name="vp"):
    """The mixture's exact model read through captions: "component three" (token ids of a
    word tokenizer) selects the component, the empty caption -- the null that CFG builds
    with ``null_like`` -- the marginal. At w = 1 CFG draws the named component with its
    spread; at w = 3 it stays on it; a batch of different captions draws each its own."""
    from scorelab.data.pairs import NUMBER_WORDS
    from scorelab.models.conditioning import null_like
    from scorelab.models.text import WordTokenizer

    captions = [f"component {NUMBER_WORDS[k]}" for k in range(8)]
    tok = WordTokenizer.from_captions(captions, context=4)
    word_ids = torch.tensor([tok.ids[w] for w in NUMBER_WORDS[:8]])
    path = all_sdes()[sde_name]
    exact = gmm.conditional_prediction_fn(path)

    def predict(x, t, ids):
        named = (ids[:, 2:3] == word_ids).float()                 # [B, 8], one-hot or zero
        label = torch.where(named.sum(1) > 0, named.argmax(1), NULL_LABEL)
        return exact(x, t, label)

    ids = tok.encode([captions[CLASS]] * N)[0]
    assert torch.equal(null_like(ids)[:, 2], torch.zeros(N, dtype=torch.long))
    for w in (3.0, 1.0):
        x = draw(ClassifierFree(w).prediction_fn(predict, path, ids), path, "dpm_solver")
        assert (gmm.assign(x) == CLASS).float().mean() > 0.995, w
    assert energy_distance(x, component(gmm, CLASS)) < 6 * max(floor(gmm), 1e-3)
    mixed = tok.encode([captions[i % 8] for i in range(N)])[0]
    x = draw(ClassifierFree(1.0).prediction_fn(predict, path, mixed), path, "dpm_solver")
    assert (gmm.assign(x) == torch.arange(N) % 8).float().mean() > 0.99
