"""Every random stream of every process, in the checkpoint and back on resume."""

from __future__ import annotations

import lightning as L
import torch


def rng_state() -> dict:
    import random

    import numpy as np
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # plain types and tensors only: checkpoints are read with weights_only=True
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                       int(has_gauss), float(cached))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomStates(L.Callback):
    """The random streams of every process (torch, CUDA, numpy, Python: training noise,
    times, label dropout, latent draws) in each checkpoint, and set again right before the
    first training step of a resumed run, so that it draws what the uninterrupted run drew.
    (Data order is the ``ResumableLoader``'s.) Under DDP the states of all processes are
    gathered into the checkpoint; each takes its own back."""

    def __init__(self):
        self._trainer = None
        self._pending = None

    def setup(self, trainer, pl_module, stage):
        self._trainer = trainer

    def state_dict(self) -> dict:
        state = rng_state()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            import torch.distributed as dist
            states = [None] * trainer.world_size
            dist.all_gather_object(states, state)
            return {"per_rank": states}
        return {"per_rank": [state]}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("per_rank")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._pending:
            states = self._pending
            if len(states) == trainer.world_size:      # same number of processes
                set_rng_state(states[trainer.global_rank])
            self._pending = None
