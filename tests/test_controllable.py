"""Inpainting and colorization against exact Gaussians: the conditional law of the unknown
coordinates given the known ones is closed-form."""

import pytest
import torch

from conftest import all_sdes
from scorelab.guidance.controllable import (COLOR_BASIS, MASKS, colorization, controlled_sample,
                                   inpainting, named_mask)
from scorelab.models.prediction import Prediction, prediction_fn
from scorelab.sampling import SAMPLERS
from scorelab.sampling.registry import FEW_STEP

N = 3000


def gaussian_prediction(path, mu, cov):
    """The exact denoiser of N(mu, cov) (full covariance) on any SDE or path:
    E[x0 | x_t] = mu + alpha cov (alpha^2 cov + sigma^2 I)^-1 (x - alpha mu)."""
    d = mu.shape[0]

    def model(x, t):
        shape = x.shape
        x = x.reshape(shape[0], d)
        a, s = path.alpha_sigma(t)
        a, s = a[:, None, None], s[:, None, None]
        c = a * a * cov + s * s * torch.eye(d)
        x0 = mu + (a * cov @ torch.linalg.solve(c, (x - a[..., 0] * mu)[..., None]))[..., 0]
        return Prediction.from_x0(path, x.reshape(shape), t, x0.reshape(shape))
    return prediction_fn(model)


def conditional(mu, cov, known, value):
    """Mean and covariance of the unknown coordinates given x[known] = value[known]."""
    k, u = known, ~known
    s_uk = cov[u][:, k]
    gain = s_uk @ torch.linalg.inv(cov[k][:, k])
    return mu[u] + gain @ (value[k] - mu[k]), cov[u][:, u] - gain @ s_uk.T


def correlated(d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g)
    return torch.tensor([0.5, -0.3, 0.2, 0.0]), a @ a.T / d + 0.1 * torch.eye(d)


def run(path, mu, cov, constraint, sampler="pc", steps=300, shape=None, **kw):
    options = dict(kw)
    if sampler == "pc" and path.alpha_vanishes:
        options["diffusion"] = "sigma"
    return controlled_sample(gaussian_prediction(path, mu, cov), path, constraint,
                             shape or (N, mu.shape[0]), sampler=sampler, steps=steps,
                             generator=torch.Generator().manual_seed(0), **options)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "linear"])
@pytest.mark.parametrize("sampler,steps", [("pc", 300), ("dpm_solver", 30), ("ddim", 100),
                                           ("ode", 100)])
def test_inpainting_independent_blocks_is_exact(sde_name, sampler, steps):
    """Unknown coordinates independent of the known ones (correlated among themselves):
    the projection method samples their exact law, and the known ones are pasted exactly."""
    path = all_sdes()[sde_name]
    mu, cov = correlated()
    cov[:2, 2:] = cov[2:, :2] = 0
    known = torch.tensor([True, True, False, False])
    obs = torch.tensor([1.0, -1.0, 0.0, 0.0])
    options = {"method": "heun"} if sampler == "ode" else {}
    res = run(path, mu, cov, inpainting(obs[None], ~known[None]), sampler, steps, **options)
    assert torch.equal(res.x[:, known], obs[known].expand(N, 2))
    x = res.x[:, ~known]
    m, c = conditional(mu, cov, known, obs)
    assert torch.allclose(x.mean(0), m, atol=0.05)
    assert torch.allclose(torch.cov(x.T), c, atol=0.06)


@pytest.mark.parametrize("sde_name", ["vp", "linear"])
def test_repaint_approaches_the_exact_conditional_where_projection_is_biased(sde_name):
    """With correlations between known and unknown coordinates the projection method is an
    approximation (it noises the observation independently of the trajectory); RePaint's
    resampling harmonises the two and gets close to the exact conditional Gaussian."""
    path = all_sdes()[sde_name]
    mu, cov = correlated()
    known = torch.tensor([True, True, False, False])
    obs = torch.tensor([1.0, -1.0, 0.0, 0.0])
    m, c = conditional(mu, cov, known, obs)
    constraint = inpainting(obs[None], ~known[None])
    plain = run(path, mu, cov, constraint, "pc", 200).x[:, ~known]
    repaint = run(path, mu, cov, constraint, "pc", 100, jump_length=10, n_resample=10)
    assert repaint.nfe == 10 * 100 + 10              # every pass, + the final denoising
    x = repaint.x[:, ~known]
    err_plain = (plain.mean(0) - m).abs().max()
    err_repaint = (x.mean(0) - m).abs().max()
    assert err_repaint < 0.05 and err_repaint < err_plain / 2, (err_plain, err_repaint)
    assert torch.allclose(torch.cov(x.T), c, atol=0.06)
    assert torch.equal(repaint.x[:, known], obs[known].expand(N, 2))


@pytest.mark.parametrize("sampler", sorted(set(SAMPLERS) - FEW_STEP))
def test_every_sampler_inpaints_images_with_known_pixels_bit_exact(sampler):
    """Image-shaped data, each registered sampler (rk45 solved grid interval by interval).
    The pixels are independent, so the hole's law given the observation is its prior
    N(mu, 0.05 I): the standardised hole pixels have mean 0 and standard deviation 1 (to
    the few steps' accuracy: DDIM's and EDM's spread is 0.76 and 1.26 here), and nothing of
    the observation (uniform on [-1, 1]: a copied one would have 0.58 / 0.22 = 2.6)."""
    path = all_sdes()["vp"]
    n, shape = (40 if sampler == "ode" else 100), (1, 4, 4)     # (rk45's cost grows with n)
    mu = torch.linspace(-0.5, 0.5, 16)
    cov = 0.05 * torch.eye(16)
    obs = torch.rand((n,) + shape) * 2 - 1
    hole = named_mask("centre_square", 4, 4)
    steps = {"pc": 50, "ode": 20, "ddim": 20, "dpm_solver": 10, "edm": 10, "unipc": 10}[sampler]
    res = run(path, mu, cov, inpainting(obs, hole[None, None]), sampler, steps,
              shape=(n,) + shape)
    assert torch.isfinite(res.x).all()
    assert torch.equal(res.x[:, :, ~hole], obs[:, :, ~hole])
    z = ((res.x[:, 0][:, hole] - mu.reshape(4, 4)[hole]) / 0.05 ** 0.5).flatten()
    assert z.mean().abs() < 0.2                 # (standard error 1 / sqrt(4 n) <= 0.08)
    assert 0.65 < z.std() < 1.35
    o = obs[:, 0][:, hole].flatten()
    assert torch.corrcoef(torch.stack([z, o]))[0, 1].abs() < 0.45


def test_colour_basis_is_orthonormal_with_grey_first():
    assert torch.allclose(COLOR_BASIS @ COLOR_BASIS.T, torch.eye(3), atol=1e-6)
    assert torch.allclose(COLOR_BASIS[0], torch.full((3,), 3 ** -0.5))


@pytest.mark.parametrize("sde_name", ["vp", "linear"])
def test_colorization_keeps_grey_and_samples_the_chroma_law(sde_name):
    """RGB data whose grey and chroma coordinates are independent: the colourised samples
    have the observation's grey level and the data's chroma distribution."""
    path = all_sdes()[sde_name]
    B = COLOR_BASIS
    scales = torch.tensor([0.5, 0.2, 0.1])             # std of grey, chroma 1, chroma 2
    cov1 = B.T @ torch.diag(scales ** 2) @ B           # one pixel, in RGB
    mu1 = B.T @ torch.tensor([0.1, 0.3, -0.2])
    mu, cov = mu1.repeat(4), torch.block_diag(*[cov1] * 4)   # 2x2 RGB image, channel-major
    perm = torch.arange(12).reshape(4, 3).T.reshape(-1)     # pixel-major -> [C, H, W]
    mu, cov = mu[perm], cov[perm][:, perm]
    obs = torch.rand(1, 3, 2, 2) * 2 - 1
    res = run(path, mu, cov, colorization(obs), "dpm_solver", 30, shape=(N, 3, 2, 2))
    z = torch.einsum("dc,bchw->bdhw", B, res.x)
    z_obs = torch.einsum("dc,bchw->bdhw", B, obs)
    assert torch.allclose(z[:, 0], z_obs[:, 0].expand(N, 2, 2), atol=1e-5)
    chroma = z[:, 1:].permute(1, 0, 2, 3).reshape(2, -1)
    assert torch.allclose(chroma.mean(1), torch.tensor([0.3, -0.2]), atol=0.02)
    assert torch.allclose(chroma.std(1), scales[1:], rtol=0.06)


def test_masks_and_bad_input():
    for name in MASKS:
        hole = named_mask(name, 28, 28)
        assert hole.shape == (28, 28) and 0.05 < hole.float().mean() < 0.7, name
    assert torch.equal(named_mask("random_strokes", 28, 28, seed=3),
                       named_mask("random_strokes", 28, 28, seed=3))
    assert named_mask("left_half", 4, 4)[:, :2].all() and not named_mask("left_half", 4, 4)[:, 2:].any()
    with pytest.raises(ValueError, match="unknown mask"):
        named_mask("triangle", 8, 8)
    with pytest.raises(ValueError, match="RGB"):
        colorization(torch.zeros(1, 1, 4, 4))
    path = all_sdes()["vp"]
    with pytest.raises(ValueError, match="n_resample"):
        run(path, torch.zeros(2), torch.eye(2), inpainting(torch.zeros(1, 2),
                                                           torch.tensor([[True, False]])),
            n_resample=0)
