"""Pre-emption under SLURM goes through scorelab's stop path: Lightning's SLURM environment
without its auto-requeue (no mid-step hpc_ckpt), SIGUSR1 finishes the step, last.ckpt is
written, the job is marked requeued and ``scontrol requeue $SLURM_JOB_ID`` is called; the
job that SLURM starts again continues exactly. SLURM is faked: its environment variables
and an ``scontrol`` on PATH that records its arguments."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from test_sweeps import SIGNAL_RUN, helper_env, uninterrupted  # noqa: F401,F811 (a fixture)

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
         "SLURM_NODELIST": "localhost"}


def fake_scontrol(tmp_path):
    """A directory holding an ``scontrol`` that appends its arguments to a log file."""
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    script.chmod(0o755)
    return bin_dir, log


def test_sigusr1_under_slurm_stops_and_requeues_through_scontrol(tmp_path, monkeypatch):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from scorelab.cli.preemption import cluster_plugins, stop_signals_as_sigterm
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert cluster_plugins() == []                  # not under SLURM: Lightning's default
    bin_dir, log = fake_scontrol(tmp_path)
    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    [env] = cluster_plugins()
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue
    terms = []
    before = signal.signal(signal.SIGTERM, lambda s, f: terms.append(s))
    try:
        with stop_signals_as_sigterm() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert terms == [signal.SIGTERM]        # what Lightning stops on, after the step
            assert stop.requeues
            stop.hand_over()
        assert log.read_text().split() == ["requeue", "4242"]
        monkeypatch.setenv("SLURM_JOB_NAME", "interactive")   # salloc: nothing to requeue
        with stop_signals_as_sigterm() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert not stop.requeues
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.slow
def test_slurm_preemption_requeues_and_the_job_ends_as_if_uninterrupted(
        tmp_path, uninterrupted):  # noqa: F811
    """SIGUSR1 during step 13: exit 143 with last.ckpt at step 13, the job marked requeued
    and scontrol called; SLURM's rerun of the same command (same job id, so the same run
    directory; resume=false) continues and ends with the uninterrupted run's weights."""
    bin_dir, log = fake_scontrol(tmp_path)
    env = {**helper_env(), **SLURM, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, str(ROOT / "train.py"), *SIGNAL_RUN]
    proc = subprocess.run(cmd + ["+callbacks.signal._target_=signal_at_step.SignalAtStep",
                                 "+callbacks.signal.step=13",
                                 f"+callbacks.signal.signum={int(signal.SIGUSR1)}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "train" / "4242"
    assert log.read_text().split() == ["requeue", "4242"]
    assert json.loads((run_dir / "job_status.json").read_text())["status"] == "requeued"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt",
                      weights_only=True)["global_step"] == 13
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 60
    for key in ("state_dict", "current_model_state"):
        for name, value in uninterrupted[key].items():
            assert torch.allclose(value.float(), resumed[key][name].float(), rtol=0,
                                  atol=1e-6), (key, name)
