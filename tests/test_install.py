"""The installed package: its configs ship inside it (``pkg://scorelab.conf``) and compose
from any directory, a user's own config directory joins through ``hydra.searchpath``, and
(slow) the wheel installed into a fresh environment gives working ``scorelab-*`` commands."""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from conftest import ROOT

PACKAGE = ROOT / "src" / "scorelab"


def compose_installed(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="scorelab.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def test_package_data_holds_every_config_and_weight():
    """setuptools' package-data globs of pyproject.toml cover every yaml under conf/ and the
    feature extractor's weights (what ``pip wheel`` puts into the wheel)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    shipped = set()
    for package, patterns in data.items():
        base = ROOT / "src" / package.replace(".", "/")
        for pattern in patterns:
            shipped |= {Path(p) for p in glob.glob(str(base / pattern), recursive=True)}
    wanted = set(PACKAGE.glob("conf/**/*.yaml")) | set(PACKAGE.glob("metrics/weights/*"))
    assert {p for p in wanted if "__pycache__" not in p.parts} <= shipped
    assert any(p.match("conf/debug/fdr.yaml") for p in shipped)


def test_configs_compose_from_the_package_outside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_installed(["experiment=gmm_vp_eps", "debug=fdr", "logger=many"])
    assert cfg.data._target_.endswith("GMMDataModule") and cfg.trainer.fast_dev_run
    assert set(cfg.logger) == {"csv", "tensorboard", "wandb"}


def test_a_user_config_directory_adds_an_experiment(tmp_path, monkeypatch):
    """hydra.searchpath=[file:///abs/dir]: the user's experiment/<name>.yaml composes over
    the shipped groups."""
    mine = tmp_path / "my_configs" / "experiment"
    mine.mkdir(parents=True)
    (mine / "my_gmm.yaml").write_text(
        "# @package _global_\ndefaults:\n  - gmm_vp_eps\n  - _self_\n"
        "trainer:\n  max_steps: 123\ntags: [mine]\n")
    monkeypatch.chdir(tmp_path)
    cfg = compose_installed([f"hydra.searchpath=[file://{mine.parent}]",
                             "experiment=my_gmm"])
    assert cfg.trainer.max_steps == 123 and list(cfg.tags) == ["mine"]
    assert cfg.data._target_.endswith("GMMDataModule")


@pytest.mark.slow
def test_wheel_installs_commands_that_train_outside_the_checkout(tmp_path):
    """pip wheel, then pip install of the wheel into a fresh venv (its dependencies from this
    environment, through a .pth file; nothing downloaded): ``scorelab-train --cfg job`` and a
    2-step toy training from a directory outside the checkout."""
    source, wheels = tmp_path / "source", tmp_path / "whl"     # (setuptools writes build/)
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", str(source), "-w", str(wheels)], check=True,
                   capture_output=True, cwd=tmp_path)
    [wheel] = wheels.glob("scorelab-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "scorelab_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline")
    where = subprocess.run([py, "-c", "import scorelab.cli.train as t; print(t.__file__)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True)
    assert where.stdout.strip().startswith(site)          # the wheel's copy, not src/
    job = subprocess.run([venv / "bin" / "scorelab-train", "--cfg", "job"], cwd=work, env=env,
                         check=True, capture_output=True, text=True).stdout
    assert "MNIST5kDataModule" in job
    subprocess.run([venv / "bin" / "scorelab-train", "experiment=gmm_vp_eps",
                    "trainer.max_steps=2", "data.n_samples=600", "sampler.steps=2",
                    "num_samples=4", "hydra.run.dir=run"], cwd=work, env=env, check=True,
                   capture_output=True)
    assert (work / "run" / "metrics.json").is_file()
    assert (work / "run" / "checkpoints" / "last.ckpt").is_file()
