"""Flow-matching paths and the prediction interface: paths against their closed forms and
against the hand-written SDEs, conversions on every path (alpha(T) = 0 included), and the
flow-matching loss against its weighted-DSM form."""

import math

import pytest
import torch

from conftest import all_sdes
from scorelab.models.heads import get_head
from scorelab.training.losses import DSMLoss
from scorelab.paths.interpolants import CosinePath, InterpolantPath, LinearPath
from scorelab.models.prediction import Prediction, as_prediction_fn
from scorelab.models.score import ScoreModel
from scorelab.paths.sde import SubVPSDE, VESDE, VPSDE


class AsPath(InterpolantPath):
    """An SDE seen only through alpha, sigma and their derivatives: its f and g come from
    the generic path formulas."""

    def __init__(self, path):
        super().__init__(N=path.N, sampling_eps=path.sampling_eps)
        self.inner = path

    def alpha_sigma(self, t):
        return self.inner.alpha_sigma(t)

    def derivatives(self, t):
        return self.inner.derivatives(t)


@pytest.mark.parametrize("path", [VPSDE(), VPSDE(schedule="cosine"), SubVPSDE(),
                                 SubVPSDE(schedule="cosine"), VESDE(0.01, 50.0)],
                         ids=["vp", "vp_cosine", "subvp", "subvp_cosine", "ve"])
def test_generic_path_sde_is_the_hand_written_sde(path):
    # f = alpha'/alpha, g^2 = 2 sigma sigma' - 2 f sigma^2 reproduce Score SDE's Eq. 9/11/17.
    t = torch.linspace(1e-3, 1.0, 101, dtype=torch.float64)
    x = torch.randn(101, 3, dtype=torch.float64)
    f_ref, g_ref = path.drift_diffusion(x, t)
    f, g = AsPath(path).drift_diffusion(x, t)
    torch.testing.assert_close(f, f_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", list(all_sdes()))
def test_derivatives_are_those_of_alpha_sigma(name):
    path = all_sdes()[name]
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    h = 1e-6
    (a1, s1), (a0, s0) = path.alpha_sigma(t + h), path.alpha_sigma(t - h)
    d_alpha, d_sigma = path.derivatives(t)
    torch.testing.assert_close(d_alpha, (a1 - a0) / (2 * h), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d_sigma, (s1 - s0) / (2 * h), rtol=1e-6, atol=1e-6)


def test_linear_path_closed_forms():
    path = LinearPath()
    t = torch.tensor([0.0, 0.25, 0.5, 0.9], dtype=torch.float64)
    x = torch.ones(4, 1, dtype=torch.float64)
    f, g = path.drift_diffusion(x, t)
    torch.testing.assert_close(f[:, 0], -1 / (1 - t))
    torch.testing.assert_close(g ** 2, 2 * t / (1 - t))
    torch.testing.assert_close(path.t_from_log_snr(path.log_snr(t[1:])), t[1:])
    assert path.prior_std() == 1.0 and path.alpha_vanishes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", [LinearPath(), CosinePath()], ids=["linear", "cosine"])
def test_paths_are_finite_where_samplers_evaluate_them(path, dtype):
    """alpha, sigma and their derivatives everywhere on [0, T]; f and g on [eps, T) (at T,
    where alpha = 0, they are infinite and no sampler uses them: see test_sampling)."""
    t = torch.linspace(0.0, 1.0, 1001, dtype=dtype)
    for value in (*path.alpha_sigma(t), *path.derivatives(t)):
        assert torch.isfinite(value).all()
    alpha, sigma = path.alpha_sigma(t)
    assert alpha[-1] == 0 and (alpha >= 0).all() and sigma[0] == 0 and sigma[-1] == 1
    inner = torch.linspace(path.sampling_eps, 1.0, 1001, dtype=dtype)[:-1]
    f, g = path.drift_diffusion(torch.ones(1000, 1, dtype=dtype), inner)
    assert torch.isfinite(f).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("name", list(all_sdes()))
def test_prediction_reads_every_parametrisation(name):
    path = all_sdes()[name]
    x0 = torch.randn(16, 3, dtype=torch.float64)
    eps = torch.randn(16, 3, dtype=torch.float64)
    t = torch.rand(16, dtype=torch.float64) * 0.99 + 0.005
    a, s, da, ds = path.coefficients(t, like=x0)
    x = a * x0 + s * eps
    pred = Prediction(x, x0, eps, a, s, da, ds)
    torch.testing.assert_close(pred.score, -eps / s)
    torch.testing.assert_close(pred.v, a * eps - s * x0)
    torch.testing.assert_close(pred.velocity, da * x0 + ds * eps)
    # the PF-ODE drift f x - g^2 s / 2 is the velocity
    f, g = path.drift_diffusion(x, t)
    torch.testing.assert_close(pred.velocity, f - 0.5 * g[:, None] ** 2 * pred.score)
    # a plain score function is wrapped into the same prediction
    wrapped = as_prediction_fn(lambda x_, t_: -eps / s, path)(x, t)
    torch.testing.assert_close(wrapped.x0, x0)
    torch.testing.assert_close(wrapped.velocity, pred.velocity)
    assert as_prediction_fn(lambda x_, t_: pred, path)(x, t) is pred
    # and the model's prediction reads each head's output the same way
    for head_name in ("eps", "x0", "v", "score", "edm", "velocity"):
        head = get_head(head_name)
        out = head.target(x0, eps, a, s, da, ds)
        torch.testing.assert_close(head.to_x0(out, x, a, s, da, ds), x0)


class Fixed(torch.nn.Module):
    """A backbone whose raw output is a fixed tensor (the loss sees an arbitrary error)."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, label, y=None):
        return self.out


@pytest.mark.parametrize("path_name,head_name", [
    (p, h) for p in ("linear", "cosine", "vp") for h in ("eps", "x0", "v", "velocity")
    if not (p != "vp" and h == "eps")])      # eps cannot start a sampler where alpha = 0
def test_flow_matching_loss_is_weighted_dsm(path_name, head_name):
    """The velocity-space MSE equals DSM on eps_hat weighted by (alpha sigma' - sigma
    alpha')^2 / alpha^2, for any head; for the velocity head it is the head's own MSE."""
    path = all_sdes()[path_name]
    head = get_head(head_name)
    x0 = torch.randn(64, 4, dtype=torch.float64)
    model = ScoreModel(Fixed(torch.randn(64, 4, dtype=torch.float64)), head, path)
    loss = DSMLoss(weighting="velocity", eps=1e-3)
    fm = loss(model, x0, generator=torch.Generator().manual_seed(0))
    # redo the draw by hand
    gen = torch.Generator().manual_seed(0)
    t, alpha, sigma = loss.draw(path, 64, "cpu", gen, torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    a, s, da, ds = path.coefficients(t, like=x0)
    x_t = a * x0 + s * noise
    eps_hat = head.to_eps(model.backbone.out, x_t, a, s, da, ds)
    weight = ((a * ds - s * da) / a) ** 2
    torch.testing.assert_close(fm, (weight * (eps_hat - noise) ** 2).mean())
    if head_name == "velocity":
        own = DSMLoss(weighting="none", eps=1e-3)(model, x0,
                                                  generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(fm, own)


def test_cosine_path_alpha_is_exactly_zero_at_T_in_float32():
    alpha, sigma = CosinePath().alpha_sigma(torch.tensor([1.0]))
    assert alpha.item() == 0.0 and sigma.item() == pytest.approx(1.0)
    lam = CosinePath().log_snr(torch.tensor([1.0, 0.5], dtype=torch.float64))
    assert lam[0] == float("-inf") and lam[1].item() == pytest.approx(0.0, abs=1e-12)
    assert math.isclose(float(CosinePath().t_from_log_snr(torch.tensor(0.0))), 0.5)


@pytest.mark.parametrize("time_sampling", ["uniform", "log_normal", "logit_normal"])
@pytest.mark.parametrize("path", [LinearPath(), CosinePath()], ids=["linear", "cosine"])
def test_noise_level_draws_on_flow_paths(path, time_sampling):
    """Every time sampling draws t in [eps, T] on the flow paths; the log-normal one puts
    ln(sigma / alpha) ~ N(p_mean, p_std^2) as on the SDEs (a median sigma/alpha of
    e^-1.2 with EDM's defaults)."""
    loss = DSMLoss(time_sampling=time_sampling, eps=1e-3)
    t, alpha, sigma = loss.draw(path, 20000, "cpu", torch.Generator().manual_seed(0),
                                torch.float64)
    assert (t >= 1e-3).all() and (t <= 1).all() and torch.isfinite(alpha / sigma).all()
    if time_sampling == "log_normal":
        log_level = torch.log(sigma / alpha)
        assert log_level.mean().item() == pytest.approx(-1.2, abs=0.03)
        assert log_level.std().item() == pytest.approx(1.2, abs=0.03)


def test_combinations_that_cannot_work_on_a_flow_path_say_why():
    from scorelab.training.losses import DDPMLoss, IncompatibleError
    from scorelab.models.mixture import GaussianMixture
    from scorelab.sampling import sample

    net = Fixed(torch.zeros(1))
    with pytest.raises(ValueError, match="the eps head cannot give x0 where alpha = 0"):
        ScoreModel(net, get_head("eps"), LinearPath())
    with pytest.raises(ValueError, match="log_sigma noise label .* \\+inf at t = T"):
        ScoreModel(net, get_head("velocity"), CosinePath(), noise_label="log_sigma")
    with pytest.raises(IncompatibleError, match="DDPMLoss draws step 0 at t = 0"):
        DDPMLoss().check(VPSDE(), get_head("velocity"))
    gmm = GaussianMixture.ring(2, 4)
    with pytest.raises(ValueError, match="a plain score cannot give x0 where alpha = 0"):
        sample(gmm.score_fn(LinearPath()), LinearPath(), (4, 2), sampler="ddim", steps=3)
