"""Pre-emption in training: scheduler signals (SLURM's SIGUSR1, submitit's USR2) go through
scorelab's own stop path -- finish the step, write last.ckpt, then requeue -- instead of
Lightning's mid-step ``hpc_ckpt`` requeue."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only

from scorelab.cli.common import log


def slurm_job_id() -> str | None:
    """The SLURM job this process runs in (None: none, or an interactive allocation, where
    nothing is requeued)."""
    if os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    return os.environ.get("SLURM_JOB_ID")


def cluster_plugins() -> list:
    """Where Lightning would pick its SLURM environment, the same without auto-requeue:
    Lightning's own would answer SIGUSR1 with a mid-step ``hpc_ckpt`` and requeue; here the
    signal goes through scorelab's stop path (``stop_signals_as_sigterm``) instead."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class _Stop:
    """The pre-emption signal that ``stop_signals_as_sigterm`` turned into SIGTERM, the
    handler it displaced, and how the job gets requeued."""

    def __init__(self):
        self.received: list[int] = []
        self.displaced: dict = {}

    @property
    def _submitit(self) -> bool:
        return bool(self.received) and callable(self.displaced.get(self.received[0]))

    @property
    def requeues(self) -> bool:
        """Whether ``hand_over`` requeues the job: submitit's handler, or under SLURM (not
        through submitit) SIGUSR1, the signal ``sbatch --signal=USR1@<seconds>`` sends
        before the time limit."""
        return self._submitit or (bool(self.received) and self.received[0] == signal.SIGUSR1
                                  and slurm_job_id() is not None)

    def hand_over(self) -> None:
        """Requeue the job (first process only, once its checkpoint is written)."""
        if self._submitit:
            self.displaced[self.received[0]](self.received[0], None)
        elif self.requeues and rank_zero_only.rank == 0:
            job = slurm_job_id()
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if done.returncode != 0:
                log.error("scontrol requeue %s failed: %s", job, done.stderr.strip())
            else:
                log.info("requeued SLURM job %s", job)


@contextlib.contextmanager
def stop_signals_as_sigterm():
    """Scheduler signals that announce pre-emption do what SIGTERM does in training:
    Lightning stops after the step in progress and ``Checkpoint`` saves it. These are
    SIGUSR1 (SLURM's warning before the time limit, ``--signal=USR1@90``; Lightning's own
    SLURM handling is off, ``cluster_plugins``) and, in a job that submitit launched
    (``hydra/launcher=slurm``), submitit's pre-emption signal (``$SUBMITIT_PREEMPT_SIGNAL``,
    USR2 by default), which submitit would otherwise answer by requeueing at once, mid-step
    and without a checkpoint.

    Yields a ``_Stop``: once that checkpoint is written, ``hand_over()`` requeues the job:
    by the handler it displaced (submitit's, whose checkpoint hook resubmits the same
    overrides) or, under SLURM, by ``scontrol requeue $SLURM_JOB_ID`` (SLURM reruns the same
    command, whose run directory follows the job id). The job comes back to its directory,
    where ``resume_point`` finds it marked as requeued and continues it."""
    names = ["SIGUSR1"]
    if os.environ.get("SUBMITIT_EXECUTOR"):
        names.append("SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
                     .removeprefix("SIG"))
    signals = {getattr(signal, n) for n in names if hasattr(signal, n)} - {signal.SIGTERM}
    stop = _Stop()

    def forward(signum, frame):
        stop.received.append(signum)
        os.kill(os.getpid(), signal.SIGTERM)

    stop.displaced = {s: signal.signal(s, forward) for s in signals}
    try:
        yield stop
    finally:
        for s, handler in stop.displaced.items():
            signal.signal(s, handler)
