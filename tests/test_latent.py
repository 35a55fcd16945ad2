"""Stage 2 of latent diffusion: the latent space (posterior draws, shift and scale estimated
over the whole dataset in closed form, fp32 decoding), every sampler, path and CFG unchanged
on latents, a diffusers AutoencoderKL, and the pipeline train -> sample -> evaluate through
the command line with a checkpoint that needs no stage-1 file."""

import json
import shutil
import sys

import pytest
import torch

from scorelab.latent.autoencoder import KLAutoencoder
from scorelab.data import DigitsDataModule
from scorelab.latent.datamodule import LatentDataModule
from scorelab.util.errors import ConfigError
from scorelab.latent.space import LatentSpace, PosteriorMoments, nats_to_latent_bits, stack_posterior
from conftest import CONF, compose_train, options, refused_at_start, run


def tiny_ae(seed=0):
    torch.manual_seed(seed)
    return KLAutoencoder((1, 8, 8), latent_channels=2, channels=8, channel_mult=[1, 2])


def digits(batch_size=32):
    dm = DigitsDataModule(batch_size=batch_size)
    dm.setup("fit")
    return dm


def test_draw_normalises_and_decode_inverts_the_normalisation():
    ae = tiny_ae()
    space = LatentSpace(ae, normalize="fixed", scale=0.5, shift=0.25, sample_posterior=False)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    post = space.posterior(x)
    mean, logvar = ae.encode(x)
    assert post.shape == (3, 2, 2, 4, 4) and space.latent_shape == (2, 4, 4)
    u = space.draw(post)
    assert torch.allclose(u, (mean - 0.25) * 0.5, atol=1e-6)     # the posterior mean, normalised
    assert torch.allclose(space.decode(u), ae.decode(mean), atol=1e-5)
    sampled = LatentSpace(ae, normalize="none")
    g = torch.Generator().manual_seed(3)
    z = sampled.draw(post, g)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(z, mean + (0.5 * logvar).exp() * noise, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert space.decode(u).dtype == torch.float32               # fp32 under autocast


def test_moments_are_the_closed_form_of_the_sampled_latents():
    torch.manual_seed(0)
    mean = torch.randn(50, 3, 4, 4) * torch.tensor([1.0, 2.0, 0.5])[:, None, None] + 0.7
    logvar = torch.randn(50, 3, 4, 4) - 1
    moments = PosteriorMoments()
    for chunk in torch.split(stack_posterior(mean, logvar), 7):     # any batching
        moments.update(chunk)
    z = mean + (0.5 * logvar).exp() * torch.randn(2000, *mean.shape)    # many draws each
    for mode in ("scale", "shift_scale", "channel"):
        shift, scale = moments.shift_and_scale(mode)
        u = (z - shift) * scale
        dims = (0, 1, 3, 4)
        if mode == "channel":
            assert torch.allclose(u.mean(dims), torch.zeros(3), atol=0.01)
            assert torch.allclose(u.std(dims), torch.ones(3), atol=0.01)
        else:
            assert scale.unique().numel() == 1
            assert u.std().item() == pytest.approx(1.0, abs=0.01)    # LDM's 1/std, whole data
            if mode == "shift_scale":
                assert u.mean().item() == pytest.approx(0.0, abs=0.01)
            else:
                assert shift.abs().max() == 0


@pytest.mark.parametrize("encode", ["cache", "on_the_fly"])
def test_datamodule_yields_posteriors_and_the_estimate_makes_latents_unit_scale(encode):
    ae = tiny_ae()
    space = LatentSpace(ae, normalize="shift_scale")
    dm = LatentDataModule(digits(), space, encode=encode, batch_size=100)
    dm.setup("fit")
    assert dm.shape == (1, 8, 8) and dm.latent_shape == (2, 4, 4) and dm.name == "digits"
    # every training image through the encoder, as the diffusion module draws them
    full = torch.stack([dm.pixels.train_set[i][0] for i in range(len(dm.pixels.train_set))])
    u = space.draw(space.posterior(full), torch.Generator().manual_seed(0))
    assert u.std().item() == pytest.approx(1.0, abs=0.02)
    assert u.mean().item() == pytest.approx(0.0, abs=0.02)
    x, y = next(iter(dm.train_dataloader()))
    if encode == "on_the_fly":
        assert x.shape == (32, 1, 8, 8)
        x, y = dm.on_after_batch_transfer((x, y), 0)
    assert x.shape == (32, 2, 2, 4, 4) and y.shape == (32,)
    assert len(dm.val_set) == len(dm.pixels.val_set)


def test_estimate_does_not_depend_on_the_encoding_batch():
    scales = []
    for batch_size in (64, 1000):
        space = LatentSpace(tiny_ae(), normalize="channel")
        LatentDataModule(digits(), space, batch_size=batch_size).setup("fit")
        scales.append(torch.cat([space.scale, space.shift]))
    assert torch.allclose(scales[0], scales[1], rtol=1e-6)


def test_latent_bits_are_invariant_to_the_scale():
    """log p(z) = log p(u) + D log(scale): the same z density whatever the scale."""
    space = LatentSpace(tiny_ae(), normalize="fixed", scale=4.0)
    nll_u = torch.tensor([1.0, 2.0])
    assert torch.allclose(nats_to_latent_bits(nll_u, space.log_scale_per_dim()),
                          (nll_u - torch.log(torch.tensor(4.0))) / torch.log(torch.tensor(2.0)))


def _modules(tmp_path, path, conditional=False):
    """A latent DiffusionModule and the same network as a plain module on the latent
    shape (shared weights)."""
    from scorelab.cli.build import build_module
    cfg = compose_train(["experiment=digits_fm", f"path={path}", "backbone=dit", "backbone.patch=1",
                         "backbone.hidden=32", "backbone.depth=1", "backbone.heads=2",
                         f"conditional={str(conditional).lower()}"], tmp_path)
    space = LatentSpace(tiny_ae(), normalize="fixed", scale=0.7, shift=0.1)
    latent = build_module(cfg, (1, 8, 8), 10, latent=space)
    plain = build_module(cfg, space.latent_shape, 10)
    plain.model.load_state_dict(latent.model.state_dict())
    return latent.eval(), plain.eval(), space


@pytest.mark.parametrize("path", ["vp", "ve", "linear"])
def test_every_sampler_runs_unchanged_on_latents(tmp_path, path, one_thread):
    """Sampling a latent model is sampling the same network on the latent shape, then
    decoding: bit for bit, for every sampler that runs on the path."""
    from omegaconf import OmegaConf

    from scorelab.sampling import check_sampler
    from scorelab.sampling.common import TooFewSteps
    from scorelab.sampling.registry import TWO_TIME
    latent, plain, space = _modules(tmp_path, path)
    ran = []
    for option in options("sampler"):
        if option == "checkpoint":
            continue
        settings = {**OmegaConf.to_container(OmegaConf.load(CONF / "sampler"
                                                            / f"{option}.yaml")), "steps": 3}
        if settings["name"] in TWO_TIME:          # (a two-time model's: tests/test_meanflow)
            continue
        try:
            try:
                check_sampler(plain.model.path, **settings)
            except TooFewSteps:             # explicit steps in t: a count they accept
                settings["steps"] = 30
                check_sampler(plain.model.path, **settings)
        except ValueError:
            continue                        # e.g. reverse diffusion on a flow path
        g1, g2 = (torch.Generator().manual_seed(5) for _ in range(2))
        u = plain.sample(2, generator=g1, sampler=settings).x
        res = latent.sample(2, generator=g2, sampler=settings)
        assert res.x.shape == (2, 1, 8, 8), option
        # (an untrained network may diverge, e.g. Langevin steps on VE: NaN for NaN then)
        torch.testing.assert_close(res.x, space.decode(u), rtol=0, atol=0, equal_nan=True,
                                   msg=option)
        ran.append(option)
    assert len(ran) == (11 if path == "linear" else 14), ran    # all that run on the path


def test_cfg_runs_unchanged_on_latents(tmp_path, one_thread):
    from scorelab.guidance.predictions import ClassifierFree
    latent, plain, space = _modules(tmp_path, "linear", conditional=True)
    for m in (latent, plain):
        m.set_guidance(ClassifierFree(scale=3.0))
    y = torch.tensor([1, 7])
    settings = {"name": "dpm_solver", "steps": 4}
    u = plain.sample(2, y=y, generator=torch.Generator().manual_seed(1), sampler=settings).x
    x = latent.sample(2, y=y, generator=torch.Generator().manual_seed(1), sampler=settings).x
    assert torch.equal(x, space.decode(u))


def test_bad_latent_settings_are_one_line_errors(tmp_path):
    from scorelab.cli.latent import build_latent, latent_settings
    with pytest.raises(ConfigError, match="autoencoder.normalize"):
        latent_settings({"source": "scorelab", "normalize": "l2"})
    with pytest.raises(ConfigError, match="autoencoder.encode"):
        latent_settings({"source": "scorelab", "encode": "sometimes"})
    with pytest.raises(ConfigError, match="scaling_factor"):
        latent_settings({"source": "scorelab", "normalize": "config"})
    with pytest.raises(ConfigError, match="autoencoder.ckpt: not given"):
        build_latent({"source": "scorelab", "ckpt": "???"}, (1, 8, 8))
    with pytest.raises(ConfigError, match="no such checkpoint"):
        build_latent({"source": "scorelab", "ckpt": str(tmp_path / "nope.ckpt")}, (1, 8, 8))
    assert build_latent({"source": "none"}, (1, 8, 8)) is None
    with pytest.raises(ValueError, match="autoencoder.normalize=fixed needs a scale"):
        LatentSpace(tiny_ae(), normalize="fixed")


# --- diffusers ------------------------------------------------------------------------------

def tiny_vae_dir(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=8, scaling_factor=0.5,
        shift_factor=0.1)
    path = tmp_path / "tiny_vae"
    vae.save_pretrained(path)
    return path, vae


def test_diffusers_vae_reads_its_scaling_from_its_config(tmp_path):
    from scorelab.cli.build import latent_from_checkpoint
    from scorelab.cli.latent import build_latent
    path, vae = tiny_vae_dir(tmp_path)
    space = build_latent({"source": "diffusers", "pretrained": str(path),
                          "normalize": "config"}, (1, 8, 8))
    assert space.latent_shape == (2, 4, 4)
    assert torch.all(space.scale == 0.5) and torch.all(space.shift == 0.1)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    post = space.posterior(x)
    dist = vae.encode(x).latent_dist
    assert torch.allclose(post[:, 0], dist.mean, atol=1e-5)
    u = space.draw(post, torch.Generator().manual_seed(0))
    # rebuilt from what a checkpoint stores (config, weights), without the directory
    again = latent_from_checkpoint(space.describe(), (1, 8, 8))
    again.load_state_dict(space.state_dict())
    assert torch.allclose(again.decode(u), vae.decode(u / 0.5 + 0.1).sample, atol=1e-5)
    with pytest.raises(ConfigError, match="takes 1-channel images"):
        build_latent({"source": "diffusers", "pretrained": str(path)}, (3, 8, 8))


def test_diffusers_errors_offline_and_without_the_extra(tmp_path, monkeypatch):
    from scorelab.latent.diffusers import AutoencoderUnavailable, load_pretrained
    pytest.importorskip("diffusers")
    with pytest.raises(AutoencoderUnavailable, match="not a local directory.*hub"):
        load_pretrained("no-such-org/no-such-vae", local_files_only=True)
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(AutoencoderUnavailable, match=r"pip install 'scorelab\[diffusers\]'"):
        load_pretrained(str(tmp_path))


# --- the command line -----------------------------------------------------------------------

FAST = ["data=digits", "backbone.channels=16",
        "trainer.max_steps=30", "trainer.val_check_interval=15", "sampler.steps=6",
        "num_samples=9", "callbacks.progress.refresh_rate=50",
        "callbacks.sample_grid.num_samples=9"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """A stage-1 autoencoder on 8x8 digits (4x4 latents), then a class-conditional latent
    model on it (label dropout, so that CFG applies)."""
    base = tmp_path_factory.mktemp("latent")
    run("train.py", "experiment=mnist5k_autoencoder", "data=digits", "backbone.channels=8",
        "backbone.channel_mult=[1,2]", "backbone.latent_channels=2", "trainer.max_steps=40",
        "trainer.val_check_interval=20", "callbacks.progress.refresh_rate=50",
        f"hydra.run.dir={base / 'ae'}", cwd=base, threads=1)
    ae = base / "ae" / "checkpoints" / "last.ckpt"
    run("train.py", "experiment=mnist5k_latent", *FAST, f"autoencoder.ckpt={ae}",
        "conditional=true", "p_uncond=0.2", f"hydra.run.dir={base / 'ldm'}", cwd=base,
        threads=1)
    return base


def test_latent_training_stores_the_autoencoder_and_its_scale(stages):
    m = json.loads((stages / "ldm" / "metrics.json").read_text())
    assert m["steps"] == 30 and m["latent"]["latent_shape"] == [2, 4, 4]
    ckpt = torch.load(stages / "ldm" / "checkpoints" / "last.ckpt", weights_only=True)
    meta = ckpt["scorelab"]
    assert meta["data_shape"] == [1, 8, 8] and meta["latent"]["source"] == "scorelab"
    assert meta["latent"]["config"]["_target_"] == "scorelab.latent.autoencoder.KLAutoencoder"
    assert any(k.startswith("latent.autoencoder.") for k in ckpt["state_dict"])
    assert meta["latent"]["scale"][0] == pytest.approx(float(ckpt["state_dict"]["latent.scale"]
                                                            .flatten()[0]), rel=1e-5)
    assert (stages / "ldm" / "samples.png").is_file()


def test_checkpoint_samples_and_evaluates_without_the_stage1_file(stages):
    """The stage-1 run moved away: sample.py (with CFG) and evaluate.py need only the
    diffusion checkpoint. Samples are decoded pixels; FID is against the pixel dataset;
    bits/dim is per latent dimension and says so."""
    hidden = stages / "ae_moved"
    shutil.move(stages / "ae", hidden)
    try:
        ckpt = stages / "ldm" / "checkpoints" / "last.ckpt"
        out = stages / "sample_cfg"
        run("sample.py", f"ckpt={ckpt}", "guidance=cfg", "guidance.scale=2", "class_label=3",
            "num_samples=5", f"hydra.run.dir={out}", cwd=stages, threads=1)
        import numpy as np
        x = np.load(out / "samples.npz")["samples"]
        assert x.shape == (5, 1, 8, 8) and np.isfinite(x).all()
        info = json.loads((out / "sampling.json").read_text())
        assert info["latent"]["latent_shape"] == [2, 4, 4] and info["guidance"]["name"] == "cfg"
        ev = stages / "eval"
        run("evaluate.py", f"ckpt={ckpt}", "metrics=[fid,bpd]", "num_samples=20",
            "metrics.bpd.num_examples=4", "metrics.bpd.chunk=4", f"hydra.run.dir={ev}",
            cwd=stages, threads=1)
        m = json.loads((ev / "metrics.json").read_text())
        assert m["fid"] > 0 and "digits" in m["sample_settings"]["reference"]
        assert "bpd" not in m and m["latent_bpd"] == m["latent_bpd"]          # finite
        assert "latent" in m["latent_bpd_settings"]["space"]
    finally:
        shutil.move(hidden, stages / "ae")


def test_latent_errors_through_the_cli(stages, tmp_path, capsys):
    ldm = stages / "ldm" / "checkpoints" / "last.ckpt"
    ae = stages / "ae" / "checkpoints" / "last.ckpt"
    cases = [
        ("train", ["experiment=mnist5k_latent", "data=digits"], "autoencoder.ckpt: not given"),
        ("train", ["experiment=mnist5k_latent", "data=digits", f"autoencoder.ckpt={ldm}"],
         "holds a diffusion model, not an autoencoder model"),
        ("sample", [f"ckpt={ldm}", "task=inpaint"], "latent model"),
    ]
    for i, (command, args, message) in enumerate(cases):
        refused_at_start(command, args, message, tmp_path / str(i), capsys)
    # the same start-up checks in process
    from scorelab.cli.build import build_any_module
    from scorelab.cli.guide import build_guidance
    from scorelab.cli.latent import build_latent
    with pytest.raises(ConfigError, match=r"trained on images \[1, 8, 8\], but the data has "
                                          r"\[1, 28, 28\]"):
        build_latent({"source": "scorelab", "ckpt": str(ae)}, (1, 28, 28))
    space = build_latent({"source": "scorelab", "ckpt": str(ae)}, (1, 8, 8))
    cfg = compose_train(["experiment=mnist5k_autoencoder", "data=digits"], tmp_path)
    with pytest.raises(ConfigError, match="model=autoencoder trains on pixels"):
        build_any_module(cfg, (1, 8, 8), 10, latent=space)
    from scorelab.cli.build import LoadedCheckpoint
    module = LoadedCheckpoint(str(ldm)).module
    with pytest.raises(ConfigError, match="holds an autoencoder model"):
        build_guidance({"name": "classifier", "classifier_ckpt": str(ae)}, module)


def test_scale_is_the_same_on_one_and_two_processes(stages):
    """Each DDP process estimates the scale from the whole training split (not its shard):
    the checkpoint of a 2-process run holds the 1-process run's value, bit for bit."""
    ae = stages / "ae" / "checkpoints" / "last.ckpt"
    out = stages / "ldm_ddp"
    run("train.py", "experiment=mnist5k_latent", *FAST, f"autoencoder.ckpt={ae}",
        "trainer.max_steps=4", "trainer.val_check_interval=4", "callbacks.sample_grid=null",
        "num_samples=2", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
        f"hydra.run.dir={out}", cwd=stages, threads=1)
    one, two = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                for d in (stages / "ldm", out))
    for key in ("latent.scale", "latent.shift"):
        assert torch.equal(one[key], two[key]), key
    assert one["latent.scale"].flatten()[0] != 1.0


@pytest.mark.slow       # (the unit test above covers loading, scaling and rebuilding)
def test_diffusers_vae_through_the_cli(tmp_path):
    """autoencoder=diffusers with a tiny random AutoencoderKL in a local directory: training
    reads its scaling_factor / shift_factor; the checkpoint samples after the directory is
    gone."""
    path, _ = tiny_vae_dir(tmp_path)
    out = tmp_path / "ldm"
    run("train.py", "experiment=mnist5k_latent", *FAST, "autoencoder=diffusers",
        f"autoencoder.pretrained={path}", "trainer.max_steps=4", "trainer.val_check_interval=4",
        "callbacks.sample_grid=null", "num_samples=2", f"hydra.run.dir={out}", cwd=tmp_path,
        threads=1)
    meta = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["scorelab"]
    assert meta["latent"]["source"] == "diffusers" and meta["latent"]["normalize"] == "fixed"
    assert meta["latent"]["scale"] == [0.5, 0.5] and meta["latent"]["shift"] == [0.1, 0.1]
    shutil.rmtree(path)
    run("sample.py", f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "num_samples=3",
        f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path, threads=1)
    assert (tmp_path / "s" / "samples.png").is_file()
