"""A checkpoint written by scorelab 0.1 (the flat package, before the move to packages by
role) still loads and samples: the ``_target_`` paths its config stores are mapped to the
modules' new homes, and it draws what 0.1 drew."""

import numpy as np
import torch

from conftest import ROOT
from scorelab.cli.build import LoadedCheckpoint
from scorelab.cli.sample import draw_samples
from scorelab.paths.sde import VPSDE
from scorelab.util.moved import current_target, upgrade_targets

DATA = ROOT / "tests" / "data"


def test_old_targets_map_to_new_homes():
    assert current_target("scorelab.sde.VPSDE") == "scorelab.paths.sde.VPSDE"
    # 0.1's module scorelab.paths is today's package, which exports its classes: kept
    for target in ("scorelab.paths.LinearPath", "scorelab.paths.VPSDE", "scorelab.paths.VESDE"):
        assert current_target(target) == target
    assert current_target("scorelab.callbacks.EMA") == "scorelab.training.callbacks.EMA"
    assert current_target("scorelab.data.latent.LatentDataModule") == \
        "scorelab.latent.datamodule.LatentDataModule"
    # new paths and foreign ones are left alone (upgrading twice changes nothing)
    for target in ("scorelab.paths.sde.VPSDE", "scorelab.paths.interpolants.LinearPath",
                   "scorelab.data.GMMDataModule", "torch.optim.Adam"):
        assert current_target(target) == target
    cfg = {"sde": {"_target_": "scorelab.sde.VESDE"}, "l": [{"_target_": "scorelab.losses.DSMLoss"}]}
    assert upgrade_targets(cfg) == {"sde": {"_target_": "scorelab.paths.sde.VESDE"},
                                    "l": [{"_target_": "scorelab.training.losses.DSMLoss"}]}


def test_checkpoint_from_before_the_move_loads_and_samples_as_before():
    ckpt = DATA / "legacy_v0_gmm_vp_eps.ckpt"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["scorelab"]["config"]["sde"]["_target_"] == "scorelab.sde.VPSDE"   # as written
    loaded = LoadedCheckpoint(str(ckpt))
    assert isinstance(loaded.module.model.path, VPSDE)
    settings = {"name": "ddim", "steps": 10, "eta": 0.0, "grid": "quadratic"}   # as 0.1 ran it
    x, _, nfe, _ = draw_samples(loaded, settings, 8, seed=0, device=torch.device("cpu"))
    # what scorelab 0.1's `sample.py ckpt=... num_samples=8 sampler=ddim sampler.steps=10`
    # wrote to samples.npz
    expected = np.load(DATA / "legacy_v0_gmm_vp_eps_ddim10.npy")
    assert nfe == 10
    # the samples reach |x| ~ 200, where float32's spacing is 1.5e-5: a relative tolerance,
    # so that another torch version's kernels (summation order) still pass
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
