"""Training callbacks, one concern each: ``ema`` (EMA weights), ``checkpoint`` (last.ckpt at
the end and on pre-emption), ``random_states`` (exact resume of every random stream),
``sample_grid`` (sample grids on disk and in the loggers), ``divergence`` (stop a run whose
loss blew up). Metric callbacks live with the metrics (``scorelab.metrics.callbacks``)."""

from scorelab.training.callbacks.checkpoint import Checkpoint
from scorelab.training.callbacks.divergence import DivergenceGuard
from scorelab.training.callbacks.ema import EMA, ema_with_warmup
from scorelab.training.callbacks.random_states import RandomStates
from scorelab.training.callbacks.sample_grid import SampleGrid, log_image

__all__ = ["Checkpoint", "DivergenceGuard", "EMA", "ema_with_warmup", "RandomStates",
           "SampleGrid", "log_image"]
