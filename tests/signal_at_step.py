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


def sample_with_signal(after_steps: int, argv: list[str]) -> None:
    """sample.py's command line (``argv``), the process signalling itself SIGTERM after
    ``after_steps`` sampler steps (in the middle of a batch)."""
    import runpy
    import sys
    from pathlib import Path

    import scorelab.cli.sample as sample_cli

    class Signalling(sample_cli.SamplingProgress):
        count = 0

        def __call__(self, i, x):
            super().__call__(i, x)
            self.count += 1
            if self.count == after_steps:
                os.kill(os.getpid(), signal.SIGTERM)

    sample_cli.SamplingProgress = Signalling
    script = Path(__file__).resolve().parents[1] / "sample.py"
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")


def evaluate_with_signal(after_chunks: int, argv: list[str]) -> None:
    """evaluate.py's command line (``argv``), the process signalling itself SIGTERM when the
    ``after_chunks``-th chunk of a metric (FID samples or bits/dim examples) is done."""
    import runpy
    import sys
    from pathlib import Path

    import scorelab.callbacks as callbacks

    class Signalling(callbacks.WorkProgress):
        count = 0

        def update(self, n, nfe=None):
            super().update(n, nfe)
            Signalling.count += 1
            if Signalling.count == after_chunks:
                os.kill(os.getpid(), signal.SIGTERM)

    callbacks.WorkProgress = Signalling
    script = Path(__file__).resolve().parents[1] / "evaluate.py"
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")
