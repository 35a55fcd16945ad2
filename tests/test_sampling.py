"""The Score SDE samplers with the exact GMM score reproduce the mixture (all SDEs)."""

import pytest
import torch

from scorelab.mixture import GaussianMixture
from scorelab.sampling import SAMPLERS, sample, sampler_options


def energy_distance(a, b):
    return (2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()).item()


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.ring(2, 8, radius=1.0, std=0.1, weights=torch.arange(1.0, 9.0))


@pytest.mark.parametrize("sampler,options", [("euler_maruyama", {}), ("ode", {"method": "heun"}),
                                             ("ode", {"method": "euler"})])
def test_exact_score_reproduces_mixture(gmm, sde, sampler, options):
    n = 3000
    gen = torch.Generator().manual_seed(0)
    res = sample(gmm.score_fn(sde), sde, (n, 2), sampler=sampler, steps=300, generator=gen,
                 **options)
    truth, _ = gmm.sample(n, torch.Generator().manual_seed(1))
    ref, _ = gmm.sample(n, torch.Generator().manual_seed(2))
    # threshold from true-vs-true variability at this sample size
    assert energy_distance(res.x, truth) < 3 * max(energy_distance(ref, truth), 1e-3)
    weights = torch.bincount(gmm.assign(res.x), minlength=8).float() / n
    torch.testing.assert_close(weights, gmm.weights, atol=0.03, rtol=0)
    assert res.nfe == (600 if options.get("method") == "heun" else 300)


def test_x_init_and_generator_make_sampling_reproducible(gmm, sde):
    x_init = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(3))
    a = sample(gmm.score_fn(sde), sde, (16, 2), "ode", steps=20, x_init=x_init).x
    b = sample(gmm.score_fn(sde), sde, (16, 2), "ode", steps=20, x_init=x_init.clone()).x
    torch.testing.assert_close(a, b)
    c = sample(gmm.score_fn(sde), sde, (16, 2), "euler_maruyama", steps=20,
               generator=torch.Generator().manual_seed(4)).x
    d = sample(gmm.score_fn(sde), sde, (16, 2), "euler_maruyama", steps=20,
               generator=torch.Generator().manual_seed(4)).x
    torch.testing.assert_close(c, d)


def test_unknown_sampler_and_option_errors(gmm, sde):
    with pytest.raises(ValueError, match="known samplers: .*euler_maruyama"):
        sample(gmm.score_fn(sde), sde, (4, 2), sampler="heun")
    with pytest.raises(ValueError, match="no option.*snr.*options are: method"):
        sample(gmm.score_fn(sde), sde, (4, 2), sampler="ode", snr=0.1)
    assert set(SAMPLERS) >= {"euler_maruyama", "ode"}
    assert sampler_options("euler_maruyama") == ["denoise"]
