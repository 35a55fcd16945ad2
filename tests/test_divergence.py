"""A diverging run stops with one line naming the loss and the learning rate, before it
writes another checkpoint; ``divergence_factor`` sets the limit (null: no check)."""

import lightning as L
import pytest
import torch

from conftest import compose_train
from scorelab.cli.build import check_training_config
from scorelab.training.callbacks import Checkpoint, DivergenceGuard
from scorelab.util.errors import ConfigError, DivergedError

LR = 10.0


class Quadratic(L.LightningModule):
    """loss(w) = |w|^2 by SGD with learning rate lr: w <- (1 - 2 lr) w, so the loss of step
    k is (1 - 2 lr)^(2k) |w_0|^2: 361^k |w_0|^2 at lr = 10 (finite for hundreds of steps)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.6, 0.8]))      # |w_0|^2 = 1

    def training_step(self, batch, batch_idx):
        return (self.w ** 2).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(64, 1), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def fit(tmp_path, factor, max_steps=6):
    ckpt = Checkpoint(dirpath=str(tmp_path), save_last=True, save_top_k=0,
                      every_n_train_steps=1)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[DivergenceGuard(factor), ckpt])
    trainer.fit(Quadratic())
    return trainer


def test_a_diverging_loss_stops_training_and_keeps_the_checkpoint(tmp_path):
    """Losses 1, 361, 361^2 = 130321 > 1e4 x 1: the third step (after which the step
    counter reads 3) stops the run; the checkpoint of the step before (2) stays."""
    with pytest.raises(DivergedError) as err:
        fit(tmp_path, 1.0e4)
    message = str(err.value)
    assert "\n" not in message
    assert "by step 3: the loss reached 1.3e+05, over 10000 x its first value 1" in message
    assert f"learning rate {LR:g} (optim.optimizer.lr={LR:g})" in message
    assert "divergence_factor=null" in message
    kept = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert kept["global_step"] == 2
    assert torch.allclose(kept["state_dict"]["w"], torch.tensor([0.6, 0.8]) * 19.0 ** 2)


def test_the_limit_is_a_factor_and_the_check_can_be_off(tmp_path):
    """Factor 1e6 lets 361^2 pass and stops at 361^3 = 4.7e7; None never stops."""
    with pytest.raises(DivergedError, match=r"by step 4: the loss reached 4.7e\+07"):
        fit(tmp_path / "a", 1.0e6)
    assert fit(tmp_path / "b", None).global_step == 6


def test_the_first_loss_is_kept_for_a_resumed_run():
    guard = DivergenceGuard(100.0)
    guard.load_state_dict({"reference": 2.5})
    assert DivergenceGuard(100.0).state_dict() == {"reference": None}
    assert guard.state_dict() == {"reference": 2.5}


def test_the_default_is_on_and_bad_factors_stop_train_at_start_up(tmp_path):
    assert compose_train([], tmp_path).divergence_factor == 1.0e4
    check_training_config(compose_train(["divergence_factor=null"], tmp_path))
    for bad in ("1", "abc"):
        with pytest.raises(ConfigError, match="^divergence_factor: must be a number > 1"):
            check_training_config(compose_train([f"divergence_factor={bad}"], tmp_path))
