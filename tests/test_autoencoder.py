"""Stage 1 of latent diffusion: the KL autoencoder's shapes, loss terms and PSNR, and its
training run through the command line."""

import json
import math

import pytest
import torch

from scorelab.latent.autoencoder import KLAutoencoder, psnr
from conftest import run


@pytest.mark.parametrize("levels,factor", [(1, 1), (2, 2), (3, 4)])
def test_encode_decode_shapes(levels, factor):
    ae = KLAutoencoder((3, 16, 16), latent_channels=4, channels=8,
                       channel_mult=[1] + [2] * (levels - 1))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, logvar = ae.encode(x)
    assert ae.latent_shape == (4, 16 // factor, 16 // factor) == tuple(mean.shape[1:])
    assert logvar.shape == mean.shape
    assert ae.decode(ae.sample(mean, logvar)).shape == x.shape


def test_loss_terms_against_closed_forms():
    torch.manual_seed(0)
    ae = KLAutoencoder((1, 8, 8), latent_channels=2, channels=8, channel_mult=[1, 2],
                       kl_weight=0.5)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(1)
    m = ae.metrics(x, generator=g)
    mean, logvar = ae.encode(x)
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
    assert torch.allclose(m["kl"], kl)                                   # KL(q || N(0, I))
    assert torch.allclose(m["loss"], m["reconstruction"] + 0.5 * m["kl"])
    z = ae.sample(mean, logvar, torch.Generator().manual_seed(1))
    rec = ((ae.decode(z) - x) ** 2).flatten(1).sum(1).mean()
    assert torch.allclose(m["reconstruction"], rec, rtol=1e-5)


def test_psnr():
    x = torch.zeros(2, 1, 4, 4)
    assert psnr(x + 0.1, x).item() == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)


def test_bad_autoencoder_settings():
    with pytest.raises(ValueError, match="reconstruction"):
        KLAutoencoder((1, 8, 8), reconstruction="l3")
    with pytest.raises(ValueError, match="divisible"):
        KLAutoencoder((1, 6, 6), channel_mult=[1, 2, 2])
    with pytest.raises(ValueError, match="kl_weight"):
        KLAutoencoder((1, 8, 8), kl_weight=-1.0)


def test_autoencoder_trains_through_the_cli(tmp_path):
    """train.py model=autoencoder on 8x8 digits: a checkpoint of kind autoencoder, PSNR in
    metrics.json that training raised, reconstruction grids; loading it as a diffusion
    model is a one-line error."""
    out = tmp_path / "ae"
    run("train.py", "experiment=mnist5k_autoencoder", "data=digits", "backbone.channels=8",
        "backbone.channel_mult=[1,2]", "trainer.max_steps=60", "trainer.val_check_interval=30",
        "callbacks.progress.refresh_rate=50", f"hydra.run.dir={out}", cwd=tmp_path, threads=1)
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 60 and m["val_psnr"] > 12 and "train_loss" not in m
    assert (out / "reconstructions" / "step_000060.png").is_file()
    ckpt = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["scorelab"]["kind"] == "autoencoder"
    proc = run("sample.py", f"ckpt={out / 'checkpoints/last.ckpt'}",
               f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path, check=False, threads=1)
    assert proc.returncode == 2 and "holds a autoencoder model" not in proc.stderr
    assert "holds an autoencoder model, not a diffusion model" in proc.stderr
