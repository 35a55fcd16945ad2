"""Captions through the command line: train on data=mnist5k_pairs with conditional=true (a
tiny DiT with cross-attention), sample with prompt= / prompts= under classifier-free
guidance, and the start-up refusals of mismatched conditions."""

import json

import numpy as np
import pytest
import torch

from conftest import refused_at_start, run

TINY = ["data=mnist5k_pairs", "data.size=200", "data.batch_size=16", "conditional=true",
        "backbone=dit", "backbone.hidden=32", "backbone.depth=1", "backbone.heads=4",
        "backbone.patch=4", "text_encoder.dim=16", "text_encoder.depth=1",
        "text_encoder.heads=2", "trainer.max_steps=4", "trainer.val_check_interval=2",
        "num_samples=2", "sampler.steps=2", "callbacks.progress=null",
        "callbacks.sample_grid=null"]


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    run("train.py", *TINY, f"hydra.run.dir={root / 'run'}", cwd=root)
    return root, root / "run/checkpoints/last.ckpt"


def test_a_caption_model_trains_and_samples_from_prompts(text_ckpt):
    root, ckpt = text_ckpt
    final = json.loads((root / "run/metrics.json").read_text())
    assert len(final["prompts"]) == 2 and all("left" in c for c in final["prompts"])
    meta = torch.load(ckpt, weights_only=True)["scorelab"]
    assert meta["tokenizer"]["context"] == 16 and "seven" in meta["tokenizer"]["vocab"]
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(".cross." in k for k in state) and any(".text." in k for k in state)
    prompts = root / "prompts.txt"
    prompts.write_text("a 4 on the left and a 9 on the right\n\nseven right, one left\n")
    run("sample.py", f"ckpt={ckpt}", f"prompts={prompts}", "guidance=cfg",
        "guidance.scale=3", "num_samples=3", "sampler=dpm_solver", "sampler.steps=2",
        f"hydra.run.dir={root / 's'}", cwd=root)
    info = json.loads((root / "s/sampling.json").read_text())
    assert info["prompts"] == ["a 4 on the left and a 9 on the right",
                               "seven right, one left",
                               "a 4 on the left and a 9 on the right"]
    assert info["guidance"]["name"] == "cfg"
    x = np.load(root / "s/samples.npz")["samples"]
    assert x.shape == (3, 1, 28, 56) and np.isfinite(x).all()


def test_mismatched_conditions_are_refused_at_start(text_ckpt, tmp_path, capsys):
    _, ckpt = text_ckpt
    refused_at_start("sample", [f"ckpt={ckpt}", "class_label=3"],
                     "conditioned on captions; give prompt=TEXT", tmp_path, capsys)
    refused_at_start("sample", [f"ckpt={ckpt}", "prompt=a 3 left", f"prompts={tmp_path}/p"],
                     "not both", tmp_path, capsys)
    refused_at_start("sample", [f"ckpt={ckpt}", f"prompts={tmp_path}/missing.txt"],
                     "no such file", tmp_path, capsys)
    refused_at_start("train", ["data=mnist5k_pairs", "data.size=200", "conditional=true",
                               "backbone=mlp"], "takes no captions", tmp_path, capsys)
    refused_at_start("train", TINY + ["autoencoder=scorelab",
                                      f"autoencoder.ckpt={tmp_path}/ae.ckpt"],
                     "captions on latents", tmp_path, capsys)


def test_a_prompt_to_a_class_model_is_refused(tmp_path, capsys):
    root = tmp_path / "cls"
    run("train.py", "data=digits", "backbone=mlp", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "num_samples=2", "sampler.steps=2",
        "callbacks.progress=null", "callbacks.sample_grid=null", f"hydra.run.dir={root}",
        cwd=tmp_path)
    refused_at_start("sample", [f"ckpt={root}/checkpoints/last.ckpt", "prompt=a 3 left"],
                     "not trained on captions", tmp_path / "s", capsys)
