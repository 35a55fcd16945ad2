"""What the tests share: the repository's paths (src/ on sys.path), the SDE / path
fixtures and the Gaussian-mixture oracle, composing train.py's config in process
(``compose_train``, ``options``) and running the commands in a child process (``run``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from scorelab.conf import CONF_DIR as CONF  # noqa: E402,F401  (the shipped configs)
from scorelab.paths.interpolants import CosinePath, LinearPath  # noqa: E402
from scorelab.paths.sde import SubVPSDE, VESDE, VPSDE  # noqa: E402


def all_sdes():
    """One of each SDE family (VE with a sigma_max suited to unit-scale data) and each
    flow-matching path."""
    return {
        "vp": VPSDE(),
        "vp_cosine": VPSDE(schedule="cosine"),
        "subvp": SubVPSDE(),
        "ve": VESDE(sigma_min=0.01, sigma_max=50.0),
        "linear": LinearPath(),
        "cosine": CosinePath(),
    }


def oracle(gmm, path):
    """The exact model of a mixture: a plain score function on the SDEs (the wrapped
    user-code path), the exact denoiser on paths with alpha(T) = 0, where x0 cannot be read
    off a score."""
    return gmm.prediction_fn(path) if path.alpha_vanishes else gmm.score_fn(path)


@pytest.fixture(params=list(all_sdes()))
def path(request):
    return all_sdes()[request.param]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread: float sums in the same order whatever the machine's core count,
    and small models run many times faster than on oversubscribed cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_config(name, overrides, tmp_path):
    """The ``name`` command's config (train, sample, evaluate) with ``overrides``, its Hydra
    output directory ``tmp_path`` (set as for a real run, so that
    ``${hydra:runtime.output_dir}`` resolves), without the ``hydra`` node the task never
    sees."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]             # as in a real run: the task sees no hydra node
    return cfg


def compose_train(overrides, tmp_path):
    """train.py's config (``compose_config``)."""
    return compose_config("train", overrides, tmp_path)


def refused_at_start(command, overrides, needle, tmp_path, capsys):
    """The ``command``'s entry point (train, sample, evaluate), in-process, on the composed
    ``overrides``: it exits with status 2 and one ``scorelab: error:`` line holding
    ``needle``, and writes nothing into the run directory (a child process per case costs
    seconds of imports; tests that run the commands themselves cover the exit path)."""
    import importlib

    main = importlib.import_module(f"scorelab.cli.{command}").main
    cfg = compose_config(command, list(overrides), tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("scorelab: error:")]
    assert len(lines) == 1 and needle in lines[0], err[-2000:]
    assert "Traceback" not in err
    for produced in ("checkpoints", "csv", "samples.png", "samples.npz", "metrics.json",
                     "config.yaml"):
        assert not (tmp_path / produced).exists(), produced


def options(group):
    """The options of a config group (its file names)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def run(script, *overrides, cwd, check=True, threads=None):
    """The repository's ``script`` (train.py, sample.py, evaluate.py) with ``overrides`` in
    a child process. ``threads``: OMP_NUM_THREADS for the run (every process of a DDP run);
    None: the default (Lightning divides the CPU threads among DDP processes)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT / "src")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
