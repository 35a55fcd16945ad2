"""Start a new run from another run's weights (``ckpt_path=P ckpt_mode=finetune``)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging


# Parameters a checkpoint to fine-tune from may lack, which start where they leave the
# network unchanged: a two-time backbone's interval embedding (a flow model fine-tuned into
# MeanFlow).
NEW_PARAMETERS = ("interval_embed.",)


class FinetuneFrom(L.Callback):
    """At the start of fit, load a checkpoint's raw weights into the module and its EMA
    weights into the weight-averaging callback (EMA), nothing else: the optimiser, the
    learning-rate schedule, the step count, the data order and the random streams start
    afresh. The EMA keeps the checkpoint's update count (``averaging_state``), so it goes on
    averaging from the loaded average rather than restarting its warm-up (whose first
    update would copy the raw weights over it).

    Args:
        path: a scorelab training checkpoint (read with ``weights_only=True``).
    """

    def __init__(self, path: str):
        self.path = str(path)

    def on_fit_start(self, trainer, pl_module):
        # (after every callback's setup: the EMA's averaged copy exists by now)
        ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        average = ckpt["state_dict"]          # the EMA weights when the run had EMA
        raw = ckpt.get("current_model_state", average)
        # (train.py's check_loadable has refused any other difference)
        lacks = any(k not in raw for k in pl_module.state_dict())
        pl_module.load_state_dict(raw, strict=not lacks)
        for cb in trainer.callbacks:
            if isinstance(cb, WeightAveraging) and cb._average_model is not None:
                state = {f"module.{k}": v for k, v in average.items()}
                state.update(ckpt.get("averaging_state", {}))
                cb._average_model.load_state_dict(state, strict=False)
