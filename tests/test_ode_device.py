"""The adaptive PF-ODE on the model's device (torchdiffeq dopri5) against scipy's RK45 on
the host, both against the Gaussian-mixture oracle's exact density."""

import pytest
import torch

from conftest import oracle
from scorelab.likelihood.pf_ode import log_likelihood
from scorelab.models.mixture import GaussianMixture
from scorelab.sampling import sample
from scorelab.sampling.ode_solvers import solve_ode

SOLVERS = ("torchdiffeq", "scipy")


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.ring(2, 8, radius=1.0, std=0.1, weights=torch.arange(1.0, 9.0))


def test_solvers_agree_on_a_linear_ode_with_a_closed_form():
    """dx/dt = -x x t from 1 down to 0: x(0) = x(1) exp(1/2); NFE counted."""
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    for solver in SOLVERS:
        end, nfe = solve_ode(lambda y, t: -y * t[:, None], x, 1.0, 0.0, 1e-8, 1e-8, solver)
        torch.testing.assert_close(end, x * torch.exp(torch.tensor(0.5)), rtol=1e-6, atol=1e-6)
        assert end.dtype == x.dtype and 6 <= nfe < 400


def test_ode_samples_from_the_same_start_agree(gmm, path):
    x_init = path.prior_sampling((400, 2), generator=torch.Generator().manual_seed(0))
    res = {s: sample(oracle(gmm, path), path, (400, 2), sampler="ode", steps=1,
                     x_init=x_init.clone(), method="rk45", rtol=1e-5, atol=1e-5, solver=s)
           for s in SOLVERS}
    a, b = res["torchdiffeq"].x, res["scipy"].x
    # both are 1e-5-accurate solutions of the same ODE: they agree to a few times the tolerance
    assert (a - b).abs().mean() < 1e-3 and (a - b).abs().max() < 2e-2
    assert all(r.nfe > 20 for r in res.values())


def test_log_likelihoods_agree_and_match_the_exact_density(gmm, path):
    """... and the NFE each reports is the number of times the model was called."""
    x, _ = gmm.sample(100, torch.Generator().manual_seed(3))
    exact = gmm.log_prob_fn(path)(x, torch.full((100,), 1e-5))
    model, calls = oracle(gmm, path), [0]

    def counted(x, t):
        calls[0] += 1
        return model(x, t)

    logp = {}
    for s in SOLVERS:
        calls[0] = 0
        res = log_likelihood(counted, path, x, divergence="exact", rtol=1e-6, atol=1e-6,
                             solver=s)
        logp[s] = res.logp
        assert res.nfe == calls[0] and res.nfe >= 6 * 3     # (RK45: >= 6 per step)
        assert (res.logp - exact).abs().mean() / 2 < 0.01          # nats / dim
    assert (logp["torchdiffeq"] - logp["scipy"]).abs().mean() / 2 < 1e-3


def test_ode_defaults_to_torchdiffeq():
    from scorelab.sampling.registry import _defaults

    assert _defaults("ode")["solver"] == "torchdiffeq"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torchdiffeq_path_stays_on_the_gpu(gmm):
    from scorelab.paths.sde import VPSDE

    path, seen = VPSDE(), set()
    on_gpu = GaussianMixture(gmm.means.cuda(), gmm.stds.cuda(), gmm.weights.cuda())

    def score_fn(x, t):
        seen.add((x.device.type, t.device.type))
        return on_gpu.score_fn(path)(x, t)

    x_init = path.prior_sampling((256, 2), generator=torch.Generator().manual_seed(0))
    gpu = sample(score_fn, path, (256, 2), sampler="ode", steps=1, x_init=x_init.cuda())
    assert seen == {("cuda", "cuda")} and gpu.x.device.type == "cuda"
    cpu = sample(gmm.score_fn(path), path, (256, 2), sampler="ode", steps=1, x_init=x_init,
                 solver="scipy")
    assert (gpu.x.cpu() - cpu.x).abs().mean() < 1e-3
    x, _ = gmm.sample(64, torch.Generator().manual_seed(1))
    ll = log_likelihood(score_fn, path, x.cuda(), divergence="exact")
    ref = log_likelihood(gmm.score_fn(path), path, x, divergence="exact", solver="scipy")
    assert (ll.logp.cpu() - ref.logp).abs().mean() / 2 < 1e-3
