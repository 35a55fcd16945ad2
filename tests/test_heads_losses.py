"""Heads: exact round trips for every head x SDE; losses vanish at the exact target."""

import math

import pytest
import torch
from torch import nn

from scorelab.models.heads import HEADS, get_head
from scorelab.training.losses import DDPMLoss, DSMLoss, IncompatibleError, SMLDLoss
from scorelab.models.score import ScoreModel
from scorelab.paths.interpolants import CosinePath, LinearPath
from scorelab.paths.sde import SubVPSDE, VESDE, VPSDE


@pytest.mark.parametrize("head_name", list(HEADS))
def test_round_trip_exact(path, head_name):
    head = get_head(head_name)
    x0 = torch.randn(64, 3, dtype=torch.float64)
    noise = torch.randn(64, 3, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * (1 - 1e-3) + 1e-3
    c = path.coefficients(t, like=x0)
    alpha, sigma = c[:2]
    x = alpha * x0 + sigma * noise
    out = head.target(x0, noise, *c)
    torch.testing.assert_close(head.to_x0(out, x, *c), x0)
    torch.testing.assert_close(head.to_eps(out, x, *c), noise)
    torch.testing.assert_close(head.to_score(out, x, *c), -noise / sigma)


@pytest.mark.parametrize("head_name", [name for name, cls in HEADS.items()
                                       if cls.x0_at_pure_noise])
@pytest.mark.parametrize("path", [LinearPath(), CosinePath()], ids=["linear", "cosine"])
def test_round_trip_at_pure_noise(path, head_name):
    # At t = T, alpha = 0: every head but eps and score still gives x0 exactly.
    head = get_head(head_name)
    x0 = torch.randn(8, 3, dtype=torch.float64)
    noise = torch.randn(8, 3, dtype=torch.float64)
    c = path.coefficients(torch.ones(8, dtype=torch.float64), like=x0)
    assert (c[0] == 0).all()
    x = c[1] * noise
    out = head.target(x0, noise, *c)
    torch.testing.assert_close(head.to_x0(out, x, *c), x0)
    torch.testing.assert_close(head.to_eps(out, x, *c), noise)


def test_v_head_general_alpha_sigma():
    # v formulas hold off the VP circle too (alpha^2 + sigma^2 != 1).
    head = get_head("v")
    x0, noise = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    alpha, sigma = torch.tensor(0.7, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    x = alpha * x0 + sigma * noise
    v = head.target(x0, noise, alpha, sigma)
    torch.testing.assert_close(v, alpha * noise - sigma * x0)
    torch.testing.assert_close(head.to_x0(v, x, alpha, sigma), x0)


def test_unknown_head_names_known_ones():
    with pytest.raises(ValueError, match="known heads: eps, x0, v, score"):
        get_head("epsilon")


class OracleBackbone(nn.Module):
    """Returns the head's exact conditional target for data that is one fixed point c,
    recovering t from the noise label and undoing the ScoreModel's input scaling.
    ``coeffs(t)`` gives the (alpha, sigma) the loss used (continuous or DDPM's discrete)."""

    def __init__(self, c, head, path, coeffs):
        super().__init__()
        self.c, self.head, self.path, self.coeffs = c, head, path, coeffs
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_in, label, y=None):
        if isinstance(self.path, VESDE):    # Score SDE's VE label is sigma(t)
            t = torch.log(label / self.path.sigma_min) / math.log(self.path.sigma_max
                                                                 / self.path.sigma_min)
        else:                              # 999 t
            t = label * self.path.T / (self.path.N - 1)
        alpha, sigma = (v[:, None] for v in self.coeffs(t))
        d_alpha, d_sigma = (v[:, None] for v in self.path.derivatives(t))
        x = x_in / self.head.c_in(alpha, sigma)
        noise = (x - alpha * self.c) / sigma
        return self.head.target(self.c.expand_as(x), noise, alpha, sigma, d_alpha, d_sigma)


@pytest.mark.parametrize("head_name", list(HEADS))
@pytest.mark.parametrize("weighting", ["none", "likelihood", "velocity"])
def test_dsm_loss_zero_at_exact_target(path, head_name, weighting):
    head = get_head(head_name)
    c = torch.randn(1, 4, dtype=torch.float64)
    if path.alpha_vanishes and not head.x0_at_pure_noise:      # no sampler could start
        with pytest.raises(ValueError, match="cannot give x0 where alpha = 0"):
            ScoreModel(OracleBackbone(c, head, path, path.alpha_sigma), head, path)
        return
    model = ScoreModel(OracleBackbone(c, head, path, path.alpha_sigma), head, path)
    x0 = c.expand(256, 4)
    loss = DSMLoss(weighting=weighting, eps=1e-3)(model, x0)
    assert loss.item() < 1e-12
    # and it is not zero for a wrong network
    model_bad = ScoreModel(OracleBackbone(c + 0.5, head, path, path.alpha_sigma), head, path)
    assert DSMLoss(weighting=weighting, eps=1e-3)(model_bad, x0).item() > 1e-3


@pytest.mark.parametrize("head_name", list(HEADS))
def test_ddpm_and_smld_losses_zero_at_exact_target(head_name):
    head = get_head(head_name)
    c = torch.randn(1, 4, dtype=torch.float64)
    vp = VPSDE()
    coeffs = lambda t: vp.discrete_alpha_sigma(vp.discrete_index(t))  # noqa: E731
    model = ScoreModel(OracleBackbone(c, head, vp, coeffs), head, vp)
    assert DDPMLoss()(model, c.expand(256, 4)).item() < 1e-10
    ve = VESDE()
    model = ScoreModel(OracleBackbone(c, head, ve, ve.alpha_sigma), head, ve)
    assert SMLDLoss()(model, c.expand(256, 4)).item() < 1e-10


def test_eps_head_unweighted_is_score_sde_sigma2_weighting():
    # Score SDE's default loss ||s * std + z||^2 equals the eps head's plain MSE.
    path, head = VPSDE(), get_head("eps")
    torch.manual_seed(1)
    net = nn.Linear(3, 3).double()

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, label, y=None):
            return self.net(x)

    model = ScoreModel(Wrap(), head, path)
    x0 = torch.randn(128, 3, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ours = DSMLoss()(model, x0, generator=g1)
    t = torch.rand(128, generator=g2, dtype=torch.float64) * (1 - 1e-5) + 1e-5
    z = torch.randn(x0.shape, generator=g2, dtype=torch.float64)
    mean, std = path.marginal_prob(x0, t)
    xt = mean + std[:, None] * z
    ref = ((model.score_fn(xt, t) * std[:, None] + z) ** 2).mean(1).mean()
    torch.testing.assert_close(ours, ref)


class ZeroBackbone(nn.Module):
    def forward(self, x, label, y=None):
        return torch.zeros_like(x)


def test_reduce_sum_scales_by_dimension():
    model = ScoreModel(ZeroBackbone(), get_head("eps"), VPSDE())
    x0 = torch.randn(64, 10)
    m = DSMLoss(reduce="mean")(model, x0, generator=torch.Generator().manual_seed(0))
    s = DSMLoss(reduce="sum")(model, x0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s, 10 * m)


def test_incompatible_losses_name_the_sde():
    with pytest.raises(IncompatibleError, match="DDPMLoss .*VPSDE, but the path is VESDE"):
        DDPMLoss().check(VESDE())
    with pytest.raises(IncompatibleError, match="SMLDLoss .*VESDE, but the path is SubVPSDE"):
        SMLDLoss().check(SubVPSDE())
    with pytest.raises(ValueError, match="weighting"):
        DSMLoss(weighting="snr")
