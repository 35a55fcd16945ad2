"""Captions through the command line: train on data=mnist5k_pairs with conditional=true (a
tiny DiT with cross-attention), sample with prompt= / prompts= under classifier-free
guidance, and the start-up refusals of mismatched conditions."""

import json
import shutil
import sys

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
    # inpainting the left half of validation canvases for a prompt; the right half is kept
    run("sample.py", f"ckpt={ckpt}", "task=inpaint", "task.mask=left_half",
        "prompt='left 3, right 4'", "guidance=cfg", "guidance.scale=2", "num_samples=2",
        "sampler=ddim", "sampler.steps=4", f"hydra.run.dir={root / 'i'}", cwd=root)
    info = json.loads((root / "i/sampling.json").read_text())
    assert info["prompts"] == ["left 3, right 4"] * 2 and info["known_max_abs_change"] == 0


def test_evaluate_samples_a_caption_model_for_held_out_prompts(text_ckpt):
    """evaluate.py on a caption model: the prompts of the held-out pairs, caption accuracy
    implied by any sample metric, the halves' FID against MNIST-5k, CFG as asked."""
    root, ckpt = text_ckpt
    run("evaluate.py", f"ckpt={ckpt}", "metrics=[fid,half_fid]", "num_samples=4",
        "sample_batch_size=2", "sampler=dpm_solver", "sampler.steps=2", "guidance=cfg",
        "guidance.scale=2", f"hydra.run.dir={root / 'e'}", cwd=root)
    m = json.loads((root / "e/metrics.json").read_text())
    assert {"fid", "half_fid", "caption_accuracy", "left_accuracy", "right_accuracy"} <= set(m)
    settings = m["sample_settings"]
    assert settings["prompts"]["from"] == "unseen" and settings["features"] == "digit_halves"
    assert settings["guidance"]["scale"] == 2.0 and 0 <= m["caption_accuracy"] <= 1


def test_mismatched_conditions_are_refused_at_start(text_ckpt, tmp_path, capsys):
    _, ckpt = text_ckpt
    refused_at_start("sample", [f"ckpt={ckpt}", "class_label=3"],
                     "conditioned on captions; give prompt=TEXT", tmp_path, capsys)
    refused_at_start("sample", [f"ckpt={ckpt}", "prompt=a 3 left", f"prompts={tmp_path}/p"],
                     "not both", tmp_path, capsys)
    refused_at_start("sample", [f"ckpt={ckpt}", f"prompts={tmp_path}/missing.txt"],
                     "no such file", tmp_path, capsys)
    refused_at_start("evaluate", [f"ckpt={ckpt}", "prompts=train", "metrics=[fid]",
                                  "num_samples=4"],
                     "prompts=train: neither a file nor a split", tmp_path, capsys)
    refused_at_start("train", ["data=mnist5k_pairs", "data.size=200", "conditional=true",
                               "backbone=mlp"], "takes no captions", tmp_path, capsys)
    for overrides, needle in (
            (["data=digits", "condition=text"], "condition=text: data=digits has no captions"),
            (["data=mnist5k_pairs", "condition=class"], "has captions (condition=text)"),
            (["data=digits", "condition=none", "conditional=true"], "disagree"),
            (["data=digits", "condition=label"], "condition=label: must be one of")):
        refused_at_start("train", overrides + ["data.size=20"] * ("pairs" in overrides[0]),
                         needle, tmp_path, capsys)


def test_a_prompt_to_a_class_model_is_refused(tmp_path, capsys):
    root = tmp_path / "cls"
    run("train.py", "data=digits", "backbone=mlp", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "num_samples=2", "sampler.steps=2",
        "callbacks.progress=null", "callbacks.sample_grid=null", f"hydra.run.dir={root}",
        cwd=tmp_path)
    refused_at_start("sample", [f"ckpt={root}/checkpoints/last.ckpt", "prompt=a 3 left"],
                     "not trained on captions", tmp_path / "s", capsys)
    refused_at_start("evaluate", [f"ckpt={root}/checkpoints/last.ckpt", "prompts=seen"],
                     "not trained on captions", tmp_path / "e", capsys)


def test_a_tiny_random_clip_text_model_end_to_end(tmp_path):
    """text_encoder=clip: the captions tokenized by CLIP's BPE, the frozen text model's
    states in cross-attention; the checkpoint holds the tokenizer's files and the unchanged
    frozen weights, so prompts sample after the model's directory is gone (trained with the
    encodings of the captions kept)."""
    from transformers import CLIPTextModel

    from tiny_clip import tiny_clip

    clip = tiny_clip(tmp_path / "clip", context=20)
    tiny = [o for o in TINY if not o.startswith("text_encoder.") and o != "conditional=true"]
    tiny.append("condition=text")
    run("train.py", *tiny, "text_encoder=clip", f"text_encoder.pretrained={clip}",
        "text_encoder.cache=1000", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    tokenizer = saved["scorelab"]["tokenizer"]
    assert tokenizer["kind"] == "clip" and tokenizer["context"] == 20
    assert {"vocab.json", "tokenizer.json"} & set(tokenizer["files"])
    assert tokenizer["empty"][0] != tokenizer["empty"][1]              # start, end of text
    pretrained = CLIPTextModel.from_pretrained(clip).state_dict()
    frozen = {k.split(".text.model.", 1)[1]: v for k, v in saved["state_dict"].items()
              if ".text.model." in k}
    assert frozen.keys() == pretrained.keys()
    assert all(torch.equal(frozen[k], pretrained[k]) for k in frozen)
    shutil.rmtree(clip)
    run("sample.py", f"ckpt={ckpt}", "prompt=a 4 on the left and a nine on the right",
        "guidance=cfg", "guidance.scale=3", "num_samples=2", "sampler=dpm_solver",
        "sampler.steps=2", f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path)
    x = np.load(tmp_path / "s/samples.npz")["samples"]
    assert x.shape == (2, 1, 28, 56) and np.isfinite(x).all()


def test_clip_without_a_model_or_the_extra_is_refused_at_start(tmp_path, capsys, monkeypatch):
    clip = ["data=mnist5k_pairs", "data.size=20", "conditional=true", "backbone=dit",
            "text_encoder=clip"]
    refused_at_start("train", clip, "text_encoder=clip needs text_encoder.pretrained",
                     tmp_path, capsys)
    refused_at_start("train", clip + [f"text_encoder.pretrained={tmp_path}/no-such-model"],
                     "not a local directory, and not in the Hugging Face cache", tmp_path,
                     capsys)
    monkeypatch.setitem(sys.modules, "transformers", None)
    refused_at_start("train", clip + [f"text_encoder.pretrained={tmp_path}"],
                     "pip install 'scorelab[text]'", tmp_path, capsys)


@pytest.mark.slow
def test_text_to_image_on_latents_through_the_cli(tmp_path):
    """Captions with an autoencoder (Stable Diffusion's arrangement): a tiny random diffusers
    VAE on the canvases, a DiT on its latents reading the captions; the checkpoint samples
    prompts and evaluate.py reports caption accuracy on decoded samples."""
    from test_latent import tiny_vae_dir

    vae, _ = tiny_vae_dir(tmp_path)
    run("train.py", *TINY, "autoencoder=diffusers", f"autoencoder.pretrained={vae}",
        "backbone.patch=2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    meta = torch.load(ckpt, weights_only=True)["scorelab"]
    assert meta["latent"]["source"] == "diffusers" and "tokenizer" in meta
    run("sample.py", f"ckpt={ckpt}", "prompt='left 3, right 4'", "guidance=cfg",
        "guidance.scale=2", "num_samples=2", "sampler=dpm_solver", "sampler.steps=2",
        f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path)
    assert np.load(tmp_path / "s/samples.npz")["samples"].shape == (2, 1, 28, 56)
    run("evaluate.py", f"ckpt={ckpt}", "metrics=[fid]", "num_samples=4", "sample_batch_size=2",
        "sampler=dpm_solver", "sampler.steps=2", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    m = json.loads((tmp_path / "e/metrics.json").read_text())
    assert "caption_accuracy" in m and m["sample_settings"]["prompts"]["from"] == "unseen"
