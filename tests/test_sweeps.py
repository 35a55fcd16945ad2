"""Sweeps and interruptions through the command line: a -m sweep writes its summary (per
job; per configuration over seeds with a 95 % interval), a failing job is recorded and the
sweep goes on, scorelab.cli.summarize rebuilds the summary of an interrupted sweep, and SIGTERM /
SIGUSR1 stop training (with a checkpoint that resumes exactly) and sampling (keeping the
finished batches)."""

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, run

def helper_env() -> dict:
    """The environment of a child process that imports signal_at_step (tests/) and scorelab."""
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}",
            "OMP_NUM_THREADS": "1"}


TOY = ["experiment=gmm_vp_eps", "trainer.max_steps=10", "trainer.val_check_interval=10",
       "data.n_samples=600", "sampler.steps=10", "num_samples=50",
       "callbacks.progress.refresh_rate=0"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    base = tmp_path_factory.mktemp("sweep")
    out = base / "grid"
    run("train.py", "-m", *TOY, "sde=vp,subvp", "head=eps,x0", "seed=0,1",
        f"hydra.sweep.dir={out}", cwd=base, threads=1)
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_summary_has_a_row_per_job_and_per_configuration(sweep):
    jobs = read_csv(sweep / "summary.csv")
    assert len(jobs) == 8 and {r["status"] for r in jobs} == {"completed"}
    assert all(float(r["wall_time_s"]) > 0 and r["val_loss"] for r in jobs)
    assert {r["overrides"] for r in jobs} >= {"sde=vp head=eps seed=0", "sde=subvp head=x0 seed=1"}
    configs = read_csv(sweep / "summary_configs.csv")
    assert len(configs) == 4 and all(r["completed"] == "2" for r in configs)
    for c in configs:                       # mean and interval recomputed from the job rows
        values = [float(r["val_loss"]) for r in jobs
                  if r["overrides"].replace(" seed=0", "").replace(" seed=1", "")
                  == c["configuration"]]
        assert len(values) == 2 and c["val_loss_n"] == "2"
        mean, sd = np.mean(values), np.std(values, ddof=1)
        assert float(c["val_loss_mean"]) == pytest.approx(mean, rel=1e-3)
        # t(0.975, 1) = 12.706: the 95 % interval of two values is wide
        assert float(c["val_loss_ci95"]) == pytest.approx(12.706 * sd / math.sqrt(2), rel=1e-3)
    md = (sweep / "summary.md").read_text()
    assert "8 jobs: 8 completed" in md and "sde=subvp head=eps | 2 / 2 |" in md


def test_summarize_marks_unfinished_jobs(sweep, tmp_path):
    """An interrupted sweep: a job without job_status.json is 'unfinished'."""
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    victim = copy / "3"
    (victim / "job_status.json").unlink()
    subprocess.run([sys.executable, "-m", "scorelab.cli.summarize", str(copy)], check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    jobs = read_csv(copy / "summary.csv")
    assert [r["status"] for r in jobs].count("unfinished") == 1
    assert "1 unfinished" in (copy / "summary.md").read_text()


def test_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "sweep"
    proc = run("train.py", "-m", *TOY, "sampler.steps=10,-1", "optimized_metric=val_loss",
               f"hydra.sweep.dir={out}", cwd=tmp_path, threads=1)
    assert proc.returncode == 0
    jobs = read_csv(out / "summary.csv")
    assert [r["status"] for r in jobs] == ["completed", "failed"]
    assert "sampler.steps" in jobs[1]["error"] and jobs[0]["val_loss"]
    assert "scorelab: error: sampler.steps" in proc.stderr
    status = json.loads(((out / "1") / "job_status.json").read_text())
    assert status["status"] == "failed"


def test_optimized_metric_must_be_a_reported_number():
    from scorelab.cli.common import optimized
    from scorelab.util.errors import ConfigError
    metrics = {"val_loss": 0.5, "fid": 3, "sampler": {"name": "edm"}, "ema": True}
    assert optimized({"optimized_metric": None}, metrics) is metrics
    assert optimized({"optimized_metric": "fid"}, metrics) == 3.0
    for name in ("nope", "sampler", "ema"):
        with pytest.raises(ConfigError, match=f"optimized_metric={name}: not a number this "
                                              f"run reports; it reports fid, val_loss"):
            optimized({"optimized_metric": name}, metrics)


SIGNAL_RUN = ["experiment=gmm_vp_eps", "data.n_samples=600", "data.batch_size=64",
              "trainer.max_steps=60", "trainer.val_check_interval=20",
              "callbacks.progress.refresh_rate=0", "num_samples=10", "sampler.steps=5"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run("train.py", *SIGNAL_RUN, f"hydra.run.dir={out}", cwd=out.parent, threads=1)
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("signum,step", [
    (signal.SIGTERM, 13),
    pytest.param(signal.SIGUSR1, 8, marks=pytest.mark.slow),
    pytest.param(signal.SIGTERM, 20, marks=pytest.mark.slow)])
def test_signal_during_training_checkpoints_and_resumes_to_the_same_weights(
        tmp_path, signum, step, uninterrupted):
    """A signal during step 13 (mid-epoch: 8 batches per epoch), 8 (an epoch's last) or 20
    (a validation step): training stops after that step with a checkpoint of it and exit
    status 143, and resume=true ends with the uninterrupted run's raw and EMA weights."""
    run_dir = tmp_path / "run"
    env = helper_env()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *SIGNAL_RUN,
                           "+callbacks.signal._target_=signal_at_step.SignalAtStep",
                           f"+callbacks.signal.step={step}",
                           f"+callbacks.signal.signum={int(signum)}",
                           f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert "continue with resume=true" in proc.stderr
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == step
    run("train.py", *SIGNAL_RUN, "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path,
        threads=1)
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == uninterrupted["global_step"] == 60
    for key in ("state_dict", "current_model_state"):
        for name, value in uninterrupted[key].items():
            assert torch.allclose(value.float(), resumed[key][name].float(), rtol=0,
                                  atol=1e-6), (key, name)


DDP_RUN = ["experiment=gmm_vp_eps", "data.n_samples=600", "data.batch_size=32",
           "trainer.max_steps=40", "trainer.val_check_interval=20", "trainer=ddp",
           "trainer.devices=2", "trainer.accelerator=cpu", "callbacks.progress.refresh_rate=0",
           "num_samples=10", "sampler.steps=5"]


@pytest.mark.slow
@pytest.mark.parametrize("rank", [None, 1], ids=["every-rank", "rank-1-only"])
def test_ddp_signal_mid_epoch_resumes_to_the_same_weights(tmp_path, rank):
    """trainer=ddp on 2 gloo processes (8 steps per epoch): SIGTERM during step 7 on every
    process (srun), or on the second only, stops both after that step with one checkpoint,
    and resume=true ends with the uninterrupted run's weights (each rank's data order and
    random streams restored)."""
    env = helper_env()
    train = [sys.executable, str(ROOT / "train.py"), *DDP_RUN]
    subprocess.run(train + [f"hydra.run.dir={tmp_path / 'u'}"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=600)
    run_dir = tmp_path / "run"
    proc = subprocess.run(train + ["+callbacks.signal._target_=signal_at_step.SignalAtStep",
                                   "+callbacks.signal.step=7",
                                   f"+callbacks.signal.rank={'null' if rank is None else rank}",
                                   f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)[
        "global_step"] == 7
    subprocess.run(train + ["resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=600)
    a = torch.load(tmp_path / "u" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 40
    for key in ("state_dict", "current_model_state"):
        for name, value in a[key].items():
            assert torch.allclose(value.float(), b[key][name].float(), rtol=0, atol=1e-6), \
                (key, name)


def test_submitit_preemption_requeues_the_job_which_ends_as_if_uninterrupted(
        tmp_path, uninterrupted):
    """A sweep through submitit (its local executor: the signal handling and requeueing of
    its SLURM jobs, without a cluster). submitit's pre-emption signal USR2 during step 13:
    the step finishes, last.ckpt is written, the job is marked requeued and handed to
    submitit, which runs it again in its directory; it continues (resume=false, the
    default) and ends with the uninterrupted run's weights."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = tmp_path / "sub"
    env = helper_env()
    subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *SIGNAL_RUN,
                    "hydra/launcher=submitit_local",
                    "+callbacks.signal._target_=signal_at_step.SignalAtStep",
                    "+callbacks.signal.step=13",
                    f"+callbacks.signal.signum={int(signal.SIGUSR2)}",
                    f"hydra.sweep.dir={out}"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=600)
    log = "".join(p.read_text() for p in (out / ".submitit").rglob("*_log.err"))
    assert "Caught signal SIGUSR2" in log and "is preempted" in log
    assert "Restoring states from the checkpoint path at" in log
    job = out / "0"
    assert (job / "config_step000013.yaml").is_file()        # the second start, at step 13
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["last.ckpt"]
    assert json.loads((job / "job_status.json").read_text())["status"] == "completed"
    resumed = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 60
    for key in ("state_dict", "current_model_state"):
        for name, value in uninterrupted[key].items():
            assert torch.allclose(value.float(), resumed[key][name].float(), rtol=0,
                                  atol=1e-6), (key, name)


def with_signal_helper(helper: str, count: int, argv: list[str], cwd):
    """``signal_at_step.<helper>(count, argv)`` (a script that signals itself) in a fresh
    process."""
    env = helper_env()
    return subprocess.run([sys.executable, "-c",
                           f"import signal_at_step; signal_at_step.{helper}({count}, {argv!r})"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_signal_during_sampling_keeps_the_finished_batches(tmp_path, sweep):
    """SIGTERM in the middle of the third batch of 10: that batch is finished, the 30
    samples are kept, and the rest is not drawn."""
    ckpt = (sweep / "0") / "checkpoints" / "last.ckpt"
    out = tmp_path / "s"
    argv = [f"ckpt={ckpt}", "num_samples=1000", "batch_size=10", "sampler.steps=20",
            f"hydra.run.dir={out}"]
    proc = with_signal_helper("sample_with_signal", 50, argv, tmp_path)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    x = np.load(out / "samples.npz")["samples"]
    assert len(x) == 30
    info = json.loads((out / "sampling.json").read_text())
    assert info["interrupted"] == f"signal {int(signal.SIGTERM)}: 30 of 1000 samples"
    assert "after 30 of 1000 samples" in proc.stderr


def test_signal_during_evaluation_keeps_the_finished_chunks(tmp_path, sweep):
    """SIGTERM as the third of six NLL chunks ends: evaluate.py stops there, exits 143 and
    its metrics.json keeps the validation loss and the NLL of the 24 examples done, named
    partial_* so that no summary takes it for the full metric."""
    ckpt = (sweep / "0") / "checkpoints" / "last.ckpt"
    out = tmp_path / "e"
    argv = [f"ckpt={ckpt}", "metrics=[bpd]", "metrics.bpd.num_examples=48",
            "metrics.bpd.chunk=8", f"hydra.run.dir={out}"]
    proc = with_signal_helper("evaluate_with_signal", 3, argv, tmp_path)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "nll_nats_per_dim" not in metrics
    assert np.isfinite(metrics["partial_nll_nats_per_dim"]) and np.isfinite(metrics["val_loss"])
    assert metrics["nll_nats_per_dim_settings"]["completed"] == "24 of 48"
    assert metrics["interrupted"] == f"signal {int(signal.SIGTERM)}: nll_nats_per_dim 24 of 48"
    assert "keeps what finished" in proc.stderr.splitlines()[-1]


def test_wandb_sweep_runs_share_a_group_and_resume_their_run(tmp_path):
    """logger=wandb offline in a 2-job sweep: each job its own run, both in the group named
    after the sweep directory with the job type of their overrides, the config flat; a
    resumed job continues its W&B run id."""
    out = tmp_path / "wsweep"
    run("train.py", "-m", *TOY, "logger=wandb", "trainer.log_every_n_steps=2", "sde=vp,subvp",
        f"hydra.sweep.dir={out}", cwd=tmp_path, threads=1)
    ids = []
    for job, path in (("0", "vp"), ("1", "subvp")):
        run_id = (out / job / "wandb_run_id").read_text().strip()
        runs = list((out / job / "wandb").glob(f"offline-run-*-{run_id}"))
        assert len(runs) == 1, job
        blob = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
        # the job type (the swept override alone, not the sweep's "sde=vp,subvp") and the
        # group (the sweep directory's name, not inside a path)
        assert re.search(rb"sde=" + path.encode() + rb"[^,]", blob)
        assert re.search(rb"[^/]wsweep[^/]", blob)
        assert b"optim.optimizer.lr" in blob and b"train/loss_step" in blob
        assert b"val/loss" in blob
        assert list((runs[0] / "files" / "media" / "images").glob("samples_*.png"))
        ids.append(run_id)
    assert ids[0] != ids[1]
    # a resumed job asks W&B for the same run
    from omegaconf import OmegaConf

    from scorelab.cli.loggers import build_logger, close_loggers
    cfg = OmegaConf.create({"logger": {"_target_": "lightning.pytorch.loggers.WandbLogger",
                                       "project": "scorelab", "save_dir": str(out / "0"),
                                       "offline": True}})
    [logger] = build_logger(cfg, out / "0")
    try:
        assert logger._wandb_init["id"] == ids[0] and logger._wandb_init["resume"] == "allow"
    finally:
        close_loggers([logger])


def test_tensorboard_logger_shows_losses_and_samples(tmp_path):
    """logger=tensorboard: the losses as scalars and the final sample grid as an image."""
    out = tmp_path / "tb"
    run("train.py", *TOY, "logger=tensorboard", "trainer.log_every_n_steps=2",
        f"hydra.run.dir={out}", cwd=tmp_path, threads=1)
    events = b"".join(p.read_bytes() for p in (out / "tensorboard").rglob("events.out.*"))
    assert b"train/loss_step" in events and b"val/loss" in events and b"samples" in events


@pytest.mark.slow       # (a 2-job x 2-process sweep; DDP training runs in test_cli's default tests)
def test_sweep_with_ddp_jobs_does_not_relaunch_the_sweep(tmp_path):
    """-m with trainer=ddp: each job's second process joins that job (its log in the job's
    directory) instead of starting the sweep again."""
    out = tmp_path / "ddp"
    run("train.py", "-m", *TOY, "seed=0,1", "trainer=ddp", "trainer.devices=2",
        "trainer.accelerator=cpu", f"hydra.sweep.dir={out}", cwd=tmp_path, threads=1)
    assert sorted(d.name for d in out.iterdir() if d.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert (out / job / "train_ddp_process_1.log").is_file()
        assert json.loads((out / job / "job_status.json").read_text())["status"] == "completed"
        assert not list((out / job).glob("config_step*.yaml"))      # one config per job
    assert len(read_csv(out / "summary.csv")) == 2


def test_bad_resume_and_checkpoints_fail_in_one_line_and_keep_the_files(sweep, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(sweep / "0", run_dir)          # a finished toy run (sde=vp head=eps)
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    proc = run("train.py", *TOY, "sde=vp", "head=eps", "backbone.width=64", "resume=true",
               "trainer.max_steps=20", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False,
               threads=1)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("scorelab: error:")]
    assert len(lines) == 1 and "was trained with another config (shape" in lines[0]
    assert last.read_bytes() == before and (run_dir / "metrics.json").is_file()
    from scorelab.cli.build import LoadedCheckpoint
    from scorelab.cli.train import check_loadable
    from scorelab.util.errors import ConfigError
    # a checkpoint whose stored config no longer builds its weights
    ckpt = torch.load(last, weights_only=True)
    ckpt["scorelab"]["config"]["backbone"]["depth"] = 2
    edited = tmp_path / "edited.ckpt"
    torch.save(ckpt, edited)
    with pytest.raises(ConfigError, match="do not fit the network its config builds.*unexpected"):
        LoadedCheckpoint(str(edited))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(before[: len(before) // 2])
    with pytest.raises(ConfigError, match="is not a loadable checkpoint"):
        check_loadable(LoadedCheckpoint(str(last)).module, str(corrupt), "resume")
    assert last.read_bytes() == before


def test_unwritable_or_full_checkpoint_directory_fails_at_start_up(tmp_path, monkeypatch):
    import shutil as sh
    from collections import namedtuple

    from scorelab.cli.train import check_writable
    from scorelab.util.errors import ConfigError
    net = torch.nn.Linear(1000, 1000)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        check_writable(tmp_path / "file" / "checkpoints", net)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9, 2 ** 20))
    with pytest.raises(ConfigError, match="1 MiB free on its disk"):
        check_writable(tmp_path / "ok", net)


@pytest.mark.slow       # (the SIGTERM test above resumes mid-epoch too, through the signal)
def test_resume_mid_epoch_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    """Toy: 540 training points in batches of 64 are 8 batches per epoch; the checkpoint of
    step 13 (epoch 1, batch 5: mid-epoch) resumed to step 30 gives the raw and EMA weights,
    optimiser state and learning rate of the run that went to 30 uninterrupted."""
    common = ["experiment=gmm_vp_eps", "data.n_samples=600", "data.batch_size=64",
              "trainer.max_steps=30", "trainer.val_check_interval=8",
              "callbacks.progress.refresh_rate=0", "num_samples=10", "sampler.steps=5",
              "seed=3"]
    full = tmp_path / "full"
    run("train.py", *common, "callbacks.checkpoint.every_n_train_steps=13",
        "callbacks.checkpoint.save_top_k=-1", f"hydra.run.dir={full}", cwd=tmp_path, threads=1)
    part = tmp_path / "part" / "checkpoints"
    part.mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "step000013.ckpt", part / "last.ckpt")
    assert torch.load(part / "last.ckpt", weights_only=True)["global_step"] == 13
    run("train.py", *common, "resume=true", f"hydra.run.dir={part.parent}", cwd=tmp_path,
        threads=1)
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(part / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 30
    for key in ("state_dict", "current_model_state"):
        for name, value in a[key].items():
            assert torch.allclose(value.float(), b[key][name].float(), rtol=0, atol=1e-6), \
                (key, name)
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in sa:
        assert torch.allclose(sa[i]["exp_avg"], sb[i]["exp_avg"], atol=1e-7)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]


@pytest.mark.slow
def test_requeued_slurm_job_comes_back_to_its_directory_and_resumes(tmp_path):
    """Under SLURM the run directory is the job id's, and resume=auto starts afresh the
    first time and continues the second (the cluster requeues the same command)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
           "SLURM_JOB_ID": "4242"}
    cmd = [sys.executable, str(ROOT / "train.py"), *TOY, "resume=auto"]
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)
    run_dir = tmp_path / "outputs" / "train" / "4242"
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 10
    subprocess.run(cmd + ["trainer.max_steps=15"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    assert json.loads((run_dir / "metrics_step000015.json").read_text())["steps"] == 15
    proc = run("train.py", *TOY, "resume=maybe", f"hydra.run.dir={tmp_path / 'x'}",
               cwd=tmp_path, check=False, threads=1)
    assert proc.returncode == 2 and "resume=maybe: must be true, false or auto" in proc.stderr


def test_optuna_search_returns_the_optimized_metric(tmp_path):
    """hydra/sweeper=lr_ema: Optuna samples the learning rate and EMA decay, each trial
    returns optimized_metric, and the best is reported; the summary covers the trials."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    out = tmp_path / "optuna"
    run("train.py", "-m", *TOY, "hydra/sweeper=lr_ema", "hydra.sweeper.n_trials=2",
        "optimized_metric=val_loss", f"hydra.sweep.dir={out}", cwd=tmp_path, threads=1)
    best = (out / "optimization_results.yaml").read_text()
    assert "optim.optimizer.lr" in best and "best_value" in best
    jobs = read_csv(out / "summary.csv")
    assert len(jobs) == 2 and all("optim.optimizer.lr=" in r["overrides"] for r in jobs)
    values = [float(r["val_loss"]) for r in jobs]
    assert f"best_value: {min(values)}"[:18] in best


def test_slurm_launcher_config_composes_and_dry_runs(tmp_path):
    """hydra/launcher=slurm: the sbatch script for a 2-device DDP job (no cluster)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "slurm_dry_run.py"),
                           "hydra.launcher.partition=gpu", "trainer=ddp", "trainer.devices=2",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=tmp_path, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    text = proc.stdout
    for line in ("#SBATCH --partition=gpu", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --time=1440", "#SBATCH --job-name=train"):
        assert line in text, (line, text)
    assert "srun" in text and "submitit.core._submit" in text


def test_a_checkpoint_written_while_validating_keeps_raw_and_ema_apart(tmp_path):
    """SIGTERM can stop a validation, during which the EMA weights are swapped into the
    module: before the checkpoint is written the raw weights go back."""
    import lightning as L

    from scorelab.training.callbacks import EMA

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 2)

    module = Tiny()
    ema = EMA(decay=0.5)
    ema.setup(None, module, "fit")
    raw = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        for p in ema._average_model.parameters():
            p.add_(1.0)                               # an average that differs from raw
    ema.on_validation_epoch_start(None, module)
    assert not torch.equal(module.net.weight, raw["net.weight"])
    ema.restore_raw(module)
    assert all(torch.equal(module.state_dict()[k], raw[k]) for k in raw)
    ema.restore_raw(module)                           # idempotent
    assert all(torch.equal(module.state_dict()[k], raw[k]) for k in raw)
