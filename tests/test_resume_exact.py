"""Resumed runs end bit for bit as uninterrupted ones: a finished run trained longer
(``resume=true trainer.max_steps=<more>``), stopped mid-epoch or at an epoch's end, and
runs whose DataLoader workers draw random flips."""

import numpy as np
import pytest
import torch

from conftest import compose_train
from scorelab.data.base import Augmented, EpochShuffle, ResumableLoader, horizontal_flip

# 540 training points in batches of 64: 8 batches per epoch. A constant learning rate after
# the warm-up (a decaying one depends on max_steps, so a longer run is another schedule).
TOY = ["experiment=gmm_vp_eps", "data.n_samples=600", "data.batch_size=64",
       "backbone.width=32", "backbone.depth=2", "optim.warmup_steps=5", "optim.lr_decay=none",
       "trainer.val_check_interval=5", "callbacks.progress=null", "logger=none",
       "callbacks.ema.decay=0.9", "num_samples=10", "sampler.steps=5"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return compose_train(TOY, tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def forty(toy, tmp_path_factory):
    """The toy's checkpoint after 40 steps at once."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)        # as ``one_thread``: float sums in one order in every run
    try:
        return fit(toy, tmp_path_factory.mktemp("forty"), 40)
    finally:
        torch.set_num_threads(before)


def fit(cfg, tmp_path, max_steps: int, resume: bool = False) -> dict:
    """``cfg`` trained to ``max_steps`` with train.py's modules and the callbacks that
    carry a run's state (EMA, checkpoint, random states), continuing the run directory's
    last.ckpt if ``resume``; the last checkpoint."""
    import lightning as L

    from scorelab.cli.build import build_datamodule, build_module
    from scorelab.training.callbacks import EMA, Checkpoint, RandomStates

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm.shape, dm.num_classes, dm.is_image)
    last = tmp_path / "checkpoints" / "last.ckpt"
    trainer = L.Trainer(max_steps=max_steps, val_check_interval=5, limit_val_batches=1,
                        accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[EMA(0.9), Checkpoint(dirpath=str(last.parent), save_last=True,
                                                        save_top_k=0), RandomStates()])
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None,
                weights_only=True)
    return torch.load(last, weights_only=True)


def assert_same_run(a: dict, b: dict) -> None:
    """Bit for bit: raw and EMA weights, the optimiser's moments, the step and epoch."""
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for key in ("state_dict", "current_model_state"):
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in sa:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[i][name], sb[i][name]), (i, name)
    fa, fb = a["loops"]["fit_loop"], b["loops"]["fit_loop"]
    assert fa["epoch_progress"] == fb["epoch_progress"]


@pytest.mark.parametrize("first", [20, 16, 39], ids=["mid-epoch", "epoch-end", "last-step"])
def test_a_finished_run_trained_longer_equals_the_longer_run(toy, forty, tmp_path, first,
                                                             one_thread):
    """20 steps (epoch 2, batch 4 of 8: mid-epoch), 16 (the end of epoch 1) or 39, then
    resumed to 40: the weights, EMA, optimiser and loop counters of 40 steps at once
    (before, 20 -> 40 skipped the rest of epoch 2: weights 1e-2 apart)."""
    assert fit(toy, tmp_path / "run", first)["global_step"] == first
    assert_same_run(fit(toy, tmp_path / "run", 40, resume=True), forty)


@pytest.mark.slow       # (about 10 s: four train.py runs in this process)
def test_train_py_trained_longer_equals_the_longer_run(tmp_path, one_thread):
    """train.py trainer.max_steps=20, then resume=true trainer.max_steps=40: the run of
    train.py trainer.max_steps=40, bit for bit."""
    from scorelab.cli.train import main

    def train(path, *overrides):
        path.mkdir(exist_ok=True)
        main(compose_train([*TOY, *overrides], path))
        return torch.load(path / "checkpoints" / "last.ckpt", weights_only=True)

    forty = train(tmp_path / "forty", "trainer.max_steps=40")
    assert train(tmp_path / "run", "trainer.max_steps=20")["global_step"] == 20
    assert_same_run(train(tmp_path / "run", "trainer.max_steps=40", "resume=true"), forty)


def test_the_checkpoint_of_a_run_stopped_mid_epoch_reopens_the_epoch():
    """The fit loop's counters as Lightning leaves them when max_steps stops epoch 2 after
    4 of its batches (the epoch closed), rewritten as after its 4th batch (in progress)."""
    from scorelab.training.callbacks.checkpoint import resumable_loop_state

    def counts(ready, completed, processed=None):
        processed = completed if processed is None else processed
        return {"ready": ready, "started": ready, "processed": processed,
                "completed": completed}

    loop = {"epoch_progress": {"total": counts(3, 3), "current": counts(3, 3)},
            "epoch_loop.batch_progress": {"total": counts(20, 20), "current": counts(4, 4),
                                          "is_last_batch": False},
            "epoch_loop.state_dict": {"_batches_that_stepped": 20}}
    assert resumable_loop_state(loop)
    assert loop["epoch_progress"]["current"] == counts(3, 2)
    assert loop["epoch_loop.batch_progress"]["current"] == counts(4, 3, processed=4)
    assert loop["epoch_loop.state_dict"]["_batches_that_stepped"] == 19
    assert not resumable_loop_state(loop)           # a mid-epoch state stays as it is


def flip_loader(workers: int, seed: int = 7):
    """A shuffled, flipped loader of 40 distinct 1 x 2 x 3 images (5 batches of 8)."""
    x = torch.arange(40 * 6, dtype=torch.float32).reshape(40, 1, 2, 3)
    ds = Augmented(torch.utils.data.TensorDataset(x, torch.arange(40)), horizontal_flip)
    return ResumableLoader(ds, batch_size=8, sampler=EpochShuffle(ds, seed), seed=seed,
                           num_workers=workers, persistent_workers=workers > 0,
                           generator=torch.Generator().manual_seed(seed))


def epochs(loader, first: int, n: int) -> list:
    """The x of each batch of epochs first, ..., first + n - 1; the workers stopped after."""
    out = []
    for epoch in range(first, first + n):
        loader.sampler.set_epoch(epoch)
        out.append([x for x, _ in loader])
    if loader._iterator is not None and loader.num_workers:
        loader._iterator._shutdown_workers()    # (left to the garbage collector: seconds)
    return out


def test_flips_are_drawn_per_example_and_resume_with_workers():
    """Two workers, persistent: a loader resumed after 3 batches of epoch 1 gives the
    rest of that epoch and the next two as the uninterrupted one, flips included; the
    flips are those of no workers, about half the examples, and change with the epoch."""
    torch.manual_seed(0)
    state = torch.get_rng_state()
    whole = epochs(flip_loader(2), 0, 4)
    resumed = flip_loader(2)
    resumed.load_state_dict({"epoch": 1, "batches": 3})
    rest = epochs(resumed, 1, 3)
    assert len(rest[0]) == 2 and [len(e) for e in rest[1:]] == [5, 5]
    for got, want in zip(rest[0] + rest[1] + rest[2], whole[1][3:] + whole[2] + whole[3]):
        assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(whole[0], epochs(flip_loader(0), 0, 1)[0]))
    assert torch.equal(torch.get_rng_state(), state)    # the training noise's stream untouched

    x = torch.arange(40 * 6, dtype=torch.float32).reshape(40, 1, 2, 3)
    flipped = []
    for epoch in whole[:2]:
        batch = torch.cat(epoch)
        index = (batch[:, 0, 0].amin(-1) / 6).long()            # which image each row is
        kept = (batch == x[index]).flatten(1).all(1)
        assert torch.equal(batch[~kept], x[index][~kept].flip(-1))  # the rest are mirrored
        flipped.append(set(index[~kept].tolist()))
    assert all(12 <= len(f) <= 28 for f in flipped) and flipped[0] != flipped[1]


def write_images(root, n: int = 40):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for k in range(n // 2):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                root / label / f"{k}.png")


def test_imagefolder_flips_only_training_examples_and_keeps_load_deterministic(tmp_path):
    from scorelab.data import ImageFolderDataModule

    write_images(tmp_path / "img")
    dm = ImageFolderDataModule(root=str(tmp_path / "img"), image_size=8, channels=1,
                               random_flip=True, batch_size=8, num_workers=0)
    dm.setup("fit")
    assert isinstance(dm.train_set, Augmented) and not isinstance(dm.val_set, Augmented)
    full = dm.load()
    assert torch.equal(full[0][0], full[0][0])                  # no random transform left
    assert torch.equal(dm.train_set[0][0], dm.train_set.dataset[0][0])   # plain index: as is


@pytest.mark.slow      # (about 25 s: three runs that start two workers each epoch pass)
def test_a_run_with_two_workers_and_random_flips_resumes_exactly(tmp_path, one_thread):
    """An image folder with random flips, two DataLoader workers (persistent): 6 steps (4
    batches per epoch: mid-epoch) resumed to 12 gives the weights of 12 at once."""
    write_images(tmp_path / "img", 80)
    images = ["experiment=digits_ve_eps", "data=imagefolder", f"data.root={tmp_path / 'img'}",
              "data.image_size=8", "data.channels=1", "data.num_workers=2",
              "data.batch_size=16", "data.val_fraction=0.1", "backbone.channels=8",
              "backbone.num_res_blocks=1", "optim.lr_decay=none", "trainer.val_check_interval=4",
              "callbacks.progress=null", "logger=none", "callbacks.sample_grid=null",
              "num_samples=4", "sampler.steps=2"]

    from scorelab.cli.train import main

    def run_images(path, *overrides):
        path.mkdir(exist_ok=True)
        main(compose_train([*images, *overrides], path))
        return torch.load(path / "checkpoints" / "last.ckpt", weights_only=True)

    whole = run_images(tmp_path / "whole", "trainer.max_steps=12")
    run_images(tmp_path / "part", "trainer.max_steps=6")
    assert_same_run(run_images(tmp_path / "part", "trainer.max_steps=12", "resume=true"),
                    whole)
