"""The Gaussian-mixture oracle: exact noised score = autograd of exact noised log-density."""

import math

import pytest
import torch

from scorelab.models.mixture import GaussianMixture


@pytest.fixture
def gmm():
    means = torch.tensor([[1.0, 0.0, 0.5], [-1.0, 0.5, 0.0], [0.0, -1.0, 1.0]])
    stds = torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0.2, 0.2, 0.2]])
    return GaussianMixture(means, stds, torch.tensor([0.5, 0.3, 0.2]))


@pytest.mark.parametrize("t", [1e-3, 0.1, 0.4, 0.9])
def test_noised_score_is_grad_log_density(gmm, path, t):
    x = torch.randn(32, 3) * 2
    tt = torch.full((32,), t)
    x.requires_grad_(True)
    logp = gmm.log_prob_fn(path)(x, tt)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    torch.testing.assert_close(gmm.score_fn(path)(x.detach(), tt), grad, rtol=1e-4, atol=1e-4)


def test_log_prob_normalised_2d():
    g = GaussianMixture.ring(2, 4, radius=1.0, std=0.3)
    lin = torch.linspace(-3, 3, 601)
    xx, yy = torch.meshgrid(lin, lin, indexing="ij")
    p = g.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    assert (p.sum() * (lin[1] - lin[0]) ** 2).item() == pytest.approx(1.0, abs=1e-3)


def test_log_prob_single_gaussian_closed_form():
    g = GaussianMixture(torch.tensor([[0.5, -0.5]]), torch.tensor([[2.0, 0.5]]))
    x = torch.randn(10, 2)
    ref = torch.distributions.Normal(g.means[0], g.stds[0]).log_prob(x).sum(1)
    torch.testing.assert_close(g.log_prob(x), ref)


def test_samples_follow_weights(gmm):
    x, k = gmm.sample(20000, torch.Generator().manual_seed(0))
    freq = torch.bincount(k, minlength=3).float() / len(k)
    torch.testing.assert_close(freq, gmm.weights, atol=0.015, rtol=0)
    assert (gmm.assign(x) == k).float().mean() > 0.99
    assert math.isclose(x[k == 0].std(0)[1].item(), 0.2, rel_tol=0.05)
