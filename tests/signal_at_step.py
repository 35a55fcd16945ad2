"""A callback for the tests: the process sends itself a signal as a training step starts,
as a scheduler would (train.py ... +callbacks.signal._target_=signal_at_step.SignalAtStep)."""

import os
import signal

import lightning as L


class SignalAtStep(L.Callback):
    """``rank``: only that process signals itself (None: every process, as srun does)."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM), rank: int | None = None):
        self.step, self.signum, self.rank = int(step), int(signum), rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step - 1 and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)               # during step `step`


def _sigterm_on_call(n: int):
    """A function that sends this process SIGTERM when it is called the n-th time."""
    calls = [0]

    def tick():
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGTERM)
    return tick


def _run_script(name: str, argv: list[str]) -> None:
    """Run the repository's ``name`` (sample.py, evaluate.py) with ``argv`` in this process."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / name
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")


def sample_with_signal(after_steps: int, argv: list[str]) -> None:
    """sample.py's command line (``argv``), the process signalling itself SIGTERM after
    ``after_steps`` sampler steps (in the middle of a batch)."""
    import scorelab.cli.sample as sample_cli

    tick = _sigterm_on_call(after_steps)

    class Signalling(sample_cli.SamplingProgress):
        def __call__(self, i, x):
            super().__call__(i, x)
            tick()

    sample_cli.SamplingProgress = Signalling
    _run_script("sample.py", argv)


def evaluate_with_signal(after_chunks: int, argv: list[str]) -> None:
    """evaluate.py's command line (``argv``), the process signalling itself SIGTERM when the
    ``after_chunks``-th chunk of a metric (FID samples or bits/dim examples) is done."""
    import scorelab.metrics.callbacks as callbacks

    tick = _sigterm_on_call(after_chunks)

    class Signalling(callbacks.WorkProgress):
        def update(self, n, nfe=None):
            super().update(n, nfe)
            tick()

    callbacks.WorkProgress = Signalling
    _run_script("evaluate.py", argv)
