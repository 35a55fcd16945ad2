"""Conditional generation through the command line on tiny configs: class-conditional training
with label dropout, a noisy classifier, sample.py / evaluate.py with every guidance,
inpainting on digits and colorization on CIFAR-10-shaped synthetic RGB images."""

import json

import numpy as np
import pytest
import torch

from conftest import refused_at_start, run

FAST = ["backbone.channels=8", "trainer.max_steps=40", "trainer.val_check_interval=20",
        "sampler.steps=6", "num_samples=9", "callbacks.progress.refresh_rate=50",
        "callbacks.sample_grid.num_samples=9", "callbacks.checkpoint.every_n_train_steps=20",
        "callbacks.checkpoint.save_top_k=-1"]       # keep step 20: the autoguidance guide


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("guidance")
    run("train.py", "experiment=digits_fm", *FAST, "conditional=true", "p_uncond=0.2",
        "guidance=cfg", "guidance.scale=2", f"hydra.run.dir={base / 'cond'}", cwd=base,
        threads=1)
    run("train.py", "experiment=digits_fm", "model=classifier", "backbone=encoder",
        "backbone.channels=8", "trainer.max_steps=40", "trainer.val_check_interval=20",
        "callbacks.progress.refresh_rate=50", f"hydra.run.dir={base / 'clf'}", cwd=base,
        threads=1)
    return base


def ckpt(runs, name="cond", step=None):
    folder = runs / name / "checkpoints"
    return str(folder / (f"step{step:06d}.ckpt" if step else "last.ckpt"))


def test_conditional_training_and_classifier(runs):
    meta = torch.load(ckpt(runs), weights_only=True)["scorelab"]
    assert meta["config"]["p_uncond"] == 0.2 and meta["config"]["conditional"] is True
    m = json.loads((runs / "cond" / "metrics.json").read_text())
    assert m["guidance"] == {"name": "cfg", "scale": 2.0, "sigma_min": 0.0,
                             "sigma_max": float("inf")}          # the final grid is guided
    clf = torch.load(ckpt(runs, "clf"), weights_only=True)
    assert clf["scorelab"]["kind"] == "classifier"
    m = json.loads((runs / "clf" / "metrics.json").read_text())
    assert 0 <= m["val_acc"] <= 1 and m["steps"] == 40
    assert not (runs / "clf" / "samples.png").exists()


@pytest.mark.parametrize("guidance", [
    ["guidance=cfg", "guidance.scale=3", "guidance.sigma_max=5.0"],
    ["guidance=classifier", "guidance.scale=2", "CLF"],
    ["guidance=autoguidance", "guidance.scale=2", "GUIDE"],
])
def test_sample_with_guidance(runs, guidance):
    args = [a.replace("CLF", f"guidance.classifier_ckpt={ckpt(runs, 'clf')}")
            .replace("GUIDE", f"guidance.guide_ckpt={ckpt(runs, step=20)}") for a in guidance]
    out = runs / ("sample_" + guidance[0].split("=")[1])
    run("sample.py", f"ckpt={ckpt(runs)}", *args, "class_label=7", "num_samples=6",
        f"hydra.run.dir={out}", cwd=runs, threads=1)
    info = json.loads((out / "sampling.json").read_text())
    assert info["guidance"]["name"] == guidance[0].split("=")[1]
    data = np.load(out / "samples.npz")
    assert data["samples"].shape == (6, 1, 8, 8) and np.isfinite(data["samples"]).all()
    assert (data["labels"] == 7).all()


def test_evaluate_sweeps_the_guidance_scale(runs):
    """evaluate.py -m guidance.scale=1,3: one run per scale, FID and class accuracy each;
    w = 1 is the unguided conditional model."""
    sweep = runs / "sweep"
    run("evaluate.py", "-m", f"ckpt={ckpt(runs)}", "guidance=cfg", "guidance.scale=1,3",
        "metrics=[fid]", "num_samples=20", "sample_batch_size=10", "sampler=dpm_solver",
        "sampler.steps=4", f"hydra.sweep.dir={sweep}", cwd=runs, threads=1)
    got = {}
    for job in sorted(d for d in sweep.iterdir() if d.name.isdigit()):  # one per job
        m = json.loads((job / "metrics.json").read_text())
        got[m["guidance"]["scale"]] = m
        assert np.isfinite(m["fid"]) and 0 <= m["class_accuracy"] <= 1
    assert set(got) == {1.0, 3.0} and got[1.0]["fid"] != got[3.0]["fid"]


def test_inpainting_keeps_known_pixels_and_fills_the_hole(runs):
    out = runs / "inpaint"
    run("sample.py", f"ckpt={ckpt(runs)}", "task=inpaint", "task.mask=left_half",
        "task.index=3", "task.n_resample=2", "task.jump_length=3", "sampler=dpm_solver",
        "sampler.steps=6", "num_samples=4", f"hydra.run.dir={out}", cwd=runs, threads=1)
    info = json.loads((out / "sampling.json").read_text())
    assert info["known_max_abs_change"] == 0.0 and info["nfe_per_sample"] == 2 * 6
    x = np.load(out / "samples.npz")["samples"]
    from scorelab.data import DigitsDataModule
    dm = DigitsDataModule()
    dm.setup("validate")
    orig = torch.stack([dm.val_set[3 + i][0] for i in range(4)])
    orig01 = ((orig + 1) / 2).clamp(0, 1).numpy()       # the commands' inverse scaler
    assert np.array_equal(x[..., 4:], orig01[..., 4:])   # right half known: bit for bit
    assert not np.array_equal(x[..., :4], orig01[..., :4])
    for name in ("observations.png", "originals.png", "samples.png"):
        assert (out / name).is_file()


def test_colorization_on_synthetic_rgb(tmp_path):
    """CIFAR-10-shaped (3x32x32) synthetic images in an image folder: a few steps of
    training, then colorization keeps each image's grey level."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(12):
            img = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "imgs" / c / f"{i}.png")
    run("train.py", "data=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.num_workers=0",
        "data.batch_size=8", "data.val_fraction=0.25", "data.random_flip=false",
        "backbone.channels=8", "backbone.channel_mult=[1,2]", "backbone.attn_resolutions=[]",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "sampler.steps=3",
        "num_samples=2", "callbacks.progress.refresh_rate=50",
        f"hydra.run.dir={tmp_path / 'train'}", cwd=tmp_path, threads=1)
    out = tmp_path / "colorize"
    run("sample.py", f"ckpt={tmp_path / 'train/checkpoints/last.ckpt'}", "task=colorize",
        "sampler=dpm_solver", "sampler.steps=4", "num_samples=3", f"hydra.run.dir={out}",
        cwd=tmp_path, threads=1)
    info = json.loads((out / "sampling.json").read_text())
    assert info["known_max_abs_change"] < 1e-5
    x = torch.from_numpy(np.load(out / "samples.npz")["samples"]) * 2 - 1
    assert x.shape == (3, 3, 32, 32)
    assert x.std(1).mean() > 0.01                         # colour, not grey copies


def test_guidance_errors(runs, tmp_path, capsys):
    cases = [
        (["guidance=classifier"], "guidance.classifier_ckpt=PATH"),
        (["guidance=classifier", f"guidance.classifier_ckpt={ckpt(runs)}"],
         "holds a diffusion model"),
        (["task=colorize"], "RGB"),
        (["task=inpaint", "task.mask=nope.png"], "no such file"),
    ]
    for i, (args, message) in enumerate(cases):
        refused_at_start("sample", [f"ckpt={ckpt(runs)}", *args], message, tmp_path / str(i),
                         capsys)


def test_task_settings_are_checked():
    from scorelab.cli.task import task_settings
    from scorelab.util.errors import ConfigError
    with pytest.raises(ConfigError, match="task.n_resample"):
        task_settings({"name": "inpaint", "n_resample": 0})
    with pytest.raises(ConfigError, match="choose from"):
        task_settings({"name": "deblur"})


def test_cfg_needs_a_conditional_model_trained_with_label_dropout():
    from types import SimpleNamespace

    from scorelab.cli.guide import build_guidance
    from scorelab.util.errors import ConfigError
    node = {"name": "cfg", "scale": 2.0}
    with pytest.raises(ConfigError, match="conditional model"):
        build_guidance(node, SimpleNamespace(conditional=False, p_uncond=0.1))
    with pytest.raises(ConfigError, match="label dropout"):
        build_guidance(node, SimpleNamespace(conditional=True, p_uncond=0.0))
    with pytest.raises(ConfigError, match="unknown"):
        build_guidance({"name": "magic"}, SimpleNamespace(conditional=True, p_uncond=0.1))
    assert build_guidance({"name": "none"}, None) is None


def test_guided_fid_is_the_same_on_two_processes(runs):
    """Classifier guidance under DDP (gloo, one thread per process): the classifier moves
    to each rank's device, each rank samples its chunks with their labels and gradients,
    and FID and class accuracy are the same bits as on one process."""
    results = {}
    for devices in (1, 2):
        out = runs / f"guided_ddp{devices}"
        run("evaluate.py", f"ckpt={ckpt(runs)}", "guidance=classifier", "guidance.scale=2",
            f"guidance.classifier_ckpt={ckpt(runs, 'clf')}", "metrics=[fid]",
            "num_samples=13", "sample_batch_size=4", "sampler=dpm_solver", "sampler.steps=3",
            "trainer=ddp", f"trainer.devices={devices}", "trainer.accelerator=cpu",
            f"hydra.run.dir={out}", cwd=runs, threads=1)
        results[devices] = json.loads((out / "metrics.json").read_text())
    one, two = results[1], results[2]
    assert one["processes"] == 1 and two["processes"] == 2
    assert one["guidance"]["name"] == "classifier"
    for key in ("fid", "class_accuracy"):
        assert two[key] == one[key], key
