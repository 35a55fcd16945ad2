"""Hydra callback that writes a sweep's summary when a ``-m`` sweep ends (configured in
``conf/hydra/default.yaml``); ``python -m scorelab.cli.summarize SWEEP_DIR`` does the same for a
sweep that was interrupted or is still running."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

from scorelab.cli.summarize import write_summary

log = logging.getLogger("scorelab")


class SweepSummary(Callback):
    """Args:
        seed_key: the override that repeats a configuration (aggregated over).
    """

    def __init__(self, seed_key: str = "seed"):
        self.seed_key = seed_key

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not sweep.is_dir():
            return
        paths = write_summary(sweep, self.seed_key)
        log.info("sweep summary: %s", ", ".join(str(p) for p in paths))
