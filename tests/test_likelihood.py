"""PF-ODE likelihood with the exact GMM score matches the exact log-density."""

import math

import pytest
import torch

from conftest import all_sdes, oracle
from scorelab.likelihood.pf_ode import bits_per_dim, log_likelihood
from scorelab.models.mixture import GaussianMixture


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.ring(2, 8, radius=1.0, std=0.1, weights=torch.arange(1.0, 9.0))


def test_exact_divergence_matches_exact_log_density(gmm, path):
    x, _ = gmm.sample(200, torch.Generator().manual_seed(0))
    res = log_likelihood(oracle(gmm, path), path, x, divergence="exact", eps=1e-5,
                         rtol=1e-6, atol=1e-6)
    exact = gmm.log_prob_fn(path)(x, torch.full((200,), 1e-5))
    per_dim = (res.logp - exact).abs().mean().item() / 2
    assert per_dim < 0.01
    assert res.nfe > 0 and res.prior.shape == x.shape


# The cosine path's ODE is the stiffest near T (34 solves, ~20 s): slow-marked; the other
# paths prove the same estimator in the default run.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "cosine"
                                  else n for n in all_sdes()])
def test_hutchinson_is_unbiased(gmm, name):
    path = all_sdes()[name]
    x, _ = gmm.sample(50, torch.Generator().manual_seed(1))
    exact = log_likelihood(oracle(gmm, path), path, x, divergence="exact").logp
    for probe in ("rademacher", "gaussian"):
        runs = torch.stack([
            log_likelihood(oracle(gmm, path), path, x, divergence="hutchinson", probe=probe,
                           generator=torch.Generator().manual_seed(s)).logp
            for s in range(16)])
        bias = runs.mean(0) - exact                                  # per point
        stderr = runs.std(0) / math.sqrt(runs.shape[0])
        # the mean over probes converges to the exact value: a z-test per point
        assert (bias.abs() < 4 * stderr + 1e-3).float().mean() > 0.95
        assert runs.std(0).mean() > 1e-3                            # it is a random estimate
    many = log_likelihood(oracle(gmm, path), path, x, n_probes=64, probe="gaussian",
                          generator=torch.Generator().manual_seed(99)).logp
    assert (many - exact).abs().mean() < (runs[0] - exact).abs().mean()


def test_bits_per_dim_offset_and_change_of_variables():
    """bpd of continuous data in [0, 1] = -log p_model(2x - 1) / (D log 2) + 7 (8 bits)."""
    from scorelab.paths.sde import VPSDE

    g = GaussianMixture(torch.zeros(1, 4), torch.full((1, 4), 0.3))
    path = VPSDE()
    x_model, _ = g.sample(100, torch.Generator().manual_seed(0))
    images = ((x_model.clamp(-0.99, 0.99)) + 1) / 2
    bpd, nfe = bits_per_dim(oracle(g, path), path, images, dequantize=False,
                            divergence="exact", rtol=1e-6, atol=1e-6)
    expected = -g.log_prob(2 * images - 1) / (4 * math.log(2)) + 7
    torch.testing.assert_close(bpd, expected, rtol=0, atol=0.02)
    # dequantised: a uniform draw inside each of the 256 bins
    quant = torch.round(images * 255) / 255
    bpd_q, _ = bits_per_dim(oracle(g, path), path, quant, divergence="exact",
                            generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(bpd_q).all() and (bpd_q - expected).abs().mean() < 0.05


def test_bad_arguments():
    from scorelab.paths.sde import VPSDE

    g = GaussianMixture.ring(2, 4)
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(g.score_fn(VPSDE()), VPSDE(), torch.zeros(2, 2), divergence="trace")
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(g.score_fn(VPSDE()), VPSDE(), torch.zeros(2, 2), probe="uniform")
