"""One default sampler everywhere (library ``sample()``, ``controlled_sample``,
``DiffusionModule.sample``, the checkpoint fallback), and it runs on every path; the sampling
progress bar counts function evaluations, also those of the adaptive ODE solver."""

import inspect
import logging

import pytest
import torch

from conftest import compose_train, oracle
from scorelab.cli.build import build_datamodule, build_module
from scorelab.guidance.controllable import controlled_sample, inpainting
from scorelab.models.mixture import GaussianMixture
from scorelab.paths import VPSDE
from scorelab.sampling import DEFAULT_SAMPLER, sample
from scorelab.training.diffusion_module import DiffusionModule
from scorelab.util.errors import ConfigError
from scorelab.util.progress import SamplingProgress

MEAN, STD = torch.tensor([[0.5, -0.3]]), 0.4


def gaussian():
    return GaussianMixture(MEAN, torch.tensor([STD]))


def signature_default(fn) -> dict:
    params = inspect.signature(fn).parameters
    return {"name": params["sampler"].default, "steps": params["steps"].default}


def test_library_functions_share_the_default():
    assert signature_default(sample) == dict(DEFAULT_SAMPLER)
    assert signature_default(controlled_sample) == dict(DEFAULT_SAMPLER)


def test_module_and_checkpoint_fallback_share_the_default(tmp_path, caplog):
    """A module given no sampler samples with the default; a stored sampler that cannot run
    on the model's path is an error when training, the default sampler (with a warning)
    when loading a checkpoint."""
    cfg = compose_train(["experiment=gmm_fm", "sampler=pc"], tmp_path)   # linear path
    dm = build_datamodule(cfg)
    with pytest.raises(ConfigError, match="reverse_diffusion needs alpha"):
        build_module(cfg, dm.shape, dm.num_classes, dm.is_image)
    with caplog.at_level(logging.WARNING, logger="scorelab"):
        module = build_module(cfg, dm.shape, dm.num_classes, dm.is_image, strict_sampler=False)
    assert module.sampler == dict(DEFAULT_SAMPLER)
    assert "default sampler" in caplog.text
    plain = DiffusionModule(module.model, module.loss_fn, module.optimizer_factory, dm.shape)
    assert plain.sampler == dict(DEFAULT_SAMPLER)


def test_default_sampler_samples_a_gaussian_on_every_path(path):
    """N(mean, 0.4^2 I) with its exact score / denoiser: 18 Heun steps, 2 NFE each (the
    first one 1 NFE where alpha(T) = 0; on sub-VP, whose last levels fall fastest, the
    steps that shrink the level more than 4x are Euler's), give its mean and std."""
    from scorelab.sampling import nfe_of
    res = sample(oracle(gaussian(), path), path, (2000, 2),
                 generator=torch.Generator().manual_seed(0))
    assert res.nfe == nfe_of(path, "edm", DEFAULT_SAMPLER["steps"])
    assert res.nfe == nfe_of(path, "edm", DEFAULT_SAMPLER["steps"], max_ratio=float("inf")) \
        - (2 if type(path).__name__ == "SubVPSDE" else 0)
    assert (res.x.mean(0) - MEAN[0]).abs().max() < 0.05
    assert (res.x.std(0) - STD).abs().max() < 0.05, res.x.std(0)


def test_default_sampler_runs_controlled_generation_on_every_path(path):
    """Inpainting coordinate 1 of the Gaussian (independent of coordinate 0): its law, and
    the known coordinate exactly."""
    obs = torch.tensor([[2.0, 0.0]])
    hole = torch.tensor([False, True])
    res = controlled_sample(oracle(gaussian(), path), path, inpainting(obs, hole), (2000, 2),
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.x[:, 0], torch.full((2000,), 2.0))
    assert abs(res.x[:, 1].mean() - MEAN[0, 1]) < 0.05
    assert abs(res.x[:, 1].std() - STD) < 0.05


@pytest.mark.parametrize("sampler,options", [("ode", {"method": "rk45"}), ("edm", {}),
                                             ("pc", {"predictor": "ancestral",
                                                     "corrector": "langevin"})])
def test_sampling_progress_counts_evaluations(sampler, options):
    """The bar moves by one per model evaluation (the adaptive solver's NFE, not its one
    grid step); after the batches its total is the NFE they took."""
    path = VPSDE()
    bar = SamplingProgress(batches=2)
    nfe = 0
    for seed in (0, 1):
        res = sample(oracle(gaussian(), path), path, (64, 2), sampler=sampler, steps=6,
                     generator=torch.Generator().manual_seed(seed), callback=bar, **options)
        nfe += res.nfe
        assert bar.bar.n == nfe
        bar.batch_done()
    assert bar.bar.total == nfe > 12
    bar.close()
