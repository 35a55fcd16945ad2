"""lightning-hydra-template's conventions: debug presets, trainer presets, paths, tags,
extras, several loggers at once, ckpt_path (fine-tune or resume), optimized_metric by the
logger's name. The runs are in process, on the Gaussian-mixture toy with a tiny MLP."""

import json
import logging
import time

import pytest
import torch

from conftest import compose_train, options
from scorelab.cli.common import metric_key, optimized

# a 2-d mixture, 3 batches of 64 per epoch, a tiny MLP, 2 sampler steps
TOY = ["experiment=gmm_vp_eps", "data.n_samples=240", "data.batch_size=64",
       "backbone.width=16", "backbone.emb_dim=16", "trainer.max_steps=4",
       "trainer.val_check_interval=4", "sampler.steps=2", "num_samples=8", "callbacks.progress=null",
       "extras.print_config=false"]


def train(overrides, out):
    """train.py's main in this process, its run directory ``out`` (made, as Hydra does)."""
    from scorelab.cli.train import main
    out.mkdir(parents=True, exist_ok=True)
    return main(compose_train([*TOY, *overrides], out))


def end_of_run(out) -> dict:
    """The end-of-run files exist; metrics.json's content."""
    for name in ("checkpoints/last.ckpt", "samples.png", "metrics.json", "config.yaml"):
        assert (out / name).is_file(), name
    return json.loads((out / "metrics.json").read_text())


def test_debug_presets_compose_on_one_cpu_process(tmp_path):
    assert options("debug") == ["default", "fdr", "limit", "overfit", "profiler"]
    own = {"fdr": ("fast_dev_run", True), "overfit": ("overfit_batches", 3),
           "limit": ("limit_train_batches", 20), "default": ("detect_anomaly", True),
           "profiler": ("profiler", {"_target_": "lightning.pytorch.profilers.SimpleProfiler",
                                     "dirpath": str(tmp_path), "filename": "profile"})}
    for name in options("debug"):
        # over an experiment and a DDP trainer too
        cfg = compose_train(["experiment=mnist5k_vp_v", "trainer=ddp", f"debug={name}"],
                            tmp_path)
        assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1
        assert cfg.trainer.detect_anomaly and cfg.task_name == "debug"
        assert cfg.data.num_workers == 0
        key, value = own[name]
        assert cfg.trainer[key] == value, name


def test_trainer_presets(tmp_path):
    assert {"cpu", "gpu", "ddp", "ddp_sim", "default"} <= set(options("trainer"))
    t = {name: compose_train([f"trainer={name}"], tmp_path).trainer
         for name in ("cpu", "gpu", "ddp", "ddp_sim")}
    assert (t["cpu"].accelerator, t["cpu"].devices) == ("cpu", 1)
    assert (t["gpu"].accelerator, t["gpu"].devices) == ("gpu", 1)
    assert t["ddp"].strategy == "ddp" and t["ddp"].devices == 2
    assert (t["ddp_sim"].strategy, t["ddp_sim"].accelerator, t["ddp_sim"].devices) == \
        ("ddp", "cpu", 2)
    assert t["ddp"].max_steps == t["cpu"].max_steps      # all on the default trainer


def test_paths_group_places_data_and_runs(tmp_path):
    cfg = compose_train(["data=mnist", "paths.data_dir=/datasets"], tmp_path)
    assert cfg.data.root == "/datasets" and cfg.paths.output_dir == str(tmp_path)
    assert compose_train(["data=imagefolder", "paths.data_dir=/d"], tmp_path).data.root == \
        "/d/images"
    assert compose_train(["logger=csv"], tmp_path).logger.save_dir == str(tmp_path)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from scorelab.conf import CONF_DIR
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra = compose("train", ["paths.log_dir=/runs", "task_name=mine"],
                        return_hydra_config=True).hydra
    assert hydra.run.dir.startswith("/runs/mine/") and hydra.job.name == "mine"


def test_extras_print_the_config_tree_and_reject_a_bad_warning_pattern(tmp_path, capsys):
    from scorelab.cli.extras import apply_extras, config_tree
    from scorelab.util.errors import ConfigError
    assert config_tree({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == \
        ["a", "  b: 1", "  c", "    d: [1, 2]", "e: None"]
    cfg = compose_train(["extras.print_config=true"], tmp_path)
    apply_extras(cfg)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "config" and "  data" in out and "    batch_size: 64" in out
    cfg = compose_train(["extras.ignore_warnings=[\"(\"]"], tmp_path)
    with pytest.raises(ConfigError, match="extras.ignore_warnings: '\\(' is not a regular"):
        apply_extras(cfg)


@pytest.mark.parametrize("script", ["sample", "evaluate"])
def test_sample_and_evaluate_take_the_same_extras(script):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from conftest import CONF
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        default = compose(script, overrides=["ckpt=x"])
        off = compose(script, overrides=["ckpt=x", "extras=none"])
    assert default.extras.print_config and default.extras.ignore_warnings
    assert not off.extras.print_config and list(off.extras.ignore_warnings) == []


def test_help_states_how_to_start_from_a_checkpoint():
    from scorelab.conf import CONF_DIR
    text = (CONF_DIR / "hydra/help/train.yaml").read_text()
    for words in ("resume=true", "ckpt_path=P", "ckpt_mode=resume", "ckpt_mode=finetune",
                  "debug=default|fdr|overfit|limit|profiler", "logger=csv|tensorboard|wandb|many"):
        assert words in text, words


def test_optimized_metric_takes_the_logger_names():
    metrics = {"val_loss": 0.5, "train_loss": 0.7, "fid": 3.0, "val_acc": 0.9}
    for name, key in [("val/loss", "val_loss"), ("train/loss", "train_loss"),
                      ("train/loss_epoch", "train_loss"), ("metrics/fid", "fid"),
                      ("fid", "fid"), ("val/acc", "val_acc"), ("val_loss", "val_loss")]:
        assert metric_key(name) == key
        assert optimized({"optimized_metric": name}, metrics) == metrics[key]


@pytest.mark.parametrize("debug", ["fdr", "overfit"])
def test_debug_runs_end_with_checkpoint_grid_and_metrics(tmp_path, debug, caplog, one_thread):
    """debug=fdr: one step; debug=overfit: the same batches again. Either way last.ckpt,
    samples.png and metrics.json, and no checkpoint save or load that leaves weights_only to
    Lightning's default."""
    caplog.set_level(logging.INFO)
    out = tmp_path / debug
    train([f"debug={debug}", "trainer.max_steps=4"], out)
    m = end_of_run(out)
    assert m["steps"] == (1 if debug == "fdr" else 4)
    # the mixture's exact metric comes with every gmm run, its settings beside it
    assert m["energy"] >= 0 and m["sample_settings"]["num_samples"] == 500
    assert "weights_only` was not set" not in caplog.text


def test_many_loggers_with_tags_and_the_optimized_metric(tmp_path, one_thread):
    """logger=many: CSV, TensorBoard and W&B (offline) at once, the tags in W&B and
    metrics.json; optimized_metric=val/loss returns metrics.json's val_loss."""
    out = tmp_path / "many"
    value = train(["logger=many", "tags=[smoke,toy]", "optimized_metric=val/loss"], out)
    m = end_of_run(out)
    assert value == m["val_loss"] and m["tags"] == ["smoke", "toy"]
    assert list((out / "csv").glob("version_0/metrics.csv"))
    assert list((out / "tensorboard").glob("version_0/events.out.tfevents.*"))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs
    # (W&B's service process writes the offline file on its own: on a loaded machine the
    # records can land after finish() returns, so the file is read until they are there)
    for _ in range(60):
        blob = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
        if b"smoke" in blob and b"val/loss" in blob:
            break
        time.sleep(0.5)
    assert b"smoke" in blob and b"val/loss" in blob


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 4-step toy run: the checkpoint the next runs start from."""
    out = tmp_path_factory.mktemp("source") / "run"
    train([], out)
    return out / "checkpoints" / "last.ckpt"


def test_finetune_starts_at_step_zero_from_the_weights_and_ema(tmp_path, source, monkeypatch,
                                                                 one_thread):
    """ckpt_path=P ckpt_mode=finetune: at the start of fit the module holds P's raw weights
    and the EMA P's EMA weights, at step 0; a new optimiser (its step count is this run's)."""
    from scorelab.training.callbacks import EMA
    from scorelab.training.callbacks.finetune import FinetuneFrom
    seen = {}
    original = FinetuneFrom.on_fit_start

    def spy(self, trainer, pl_module):
        original(self, trainer, pl_module)
        ema = next(c for c in trainer.callbacks if isinstance(c, EMA))
        seen["step"] = trainer.global_step
        seen["raw"] = {k: v.clone() for k, v in pl_module.state_dict().items()}
        seen["ema"] = {k[7:]: v.clone() for k, v in ema._average_model.state_dict().items()
                       if k.startswith("module.")}
    monkeypatch.setattr(FinetuneFrom, "on_fit_start", spy)
    out = tmp_path / "finetune"
    train([f"ckpt_path={source}", "ckpt_mode=finetune", "trainer.max_steps=3",
           "trainer.val_check_interval=3"], out)
    ckpt = torch.load(source, weights_only=True)
    assert seen["step"] == 0
    for name, value in ckpt["current_model_state"].items():
        assert torch.equal(seen["raw"][name], value), name
    for name, value in ckpt["state_dict"].items():
        assert torch.equal(seen["ema"][name], value), name
    assert any(not torch.equal(ckpt["state_dict"][k], ckpt["current_model_state"][k])
               for k in ckpt["state_dict"])              # (raw and EMA do differ)
    m = end_of_run(out)
    assert m["steps"] == 3 and m["started_from"]["ckpt_mode"] == "finetune"
    new = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert new["global_step"] == 3
    assert all(int(s["step"]) == 3 for s in new["optimizer_states"][0]["state"].values())


def test_ckpt_path_resume_continues_the_step_count(tmp_path, source, one_thread):
    """ckpt_path=P (ckpt_mode=resume): a new run directory that goes on from P's step 4."""
    out = tmp_path / "longer"
    train([f"ckpt_path={source}", "trainer.max_steps=6", "trainer.val_check_interval=6"], out)
    m = end_of_run(out)
    assert m["steps"] == 6 and m["started_from"] == {"ckpt_path": str(source),
                                                     "ckpt_mode": "resume"}
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(int(s["step"]) == 6 for s in state["optimizer_states"][0]["state"].values())


def test_bad_starting_points_fail_at_start_up(tmp_path, source):
    from scorelab.cli.train import build, starting_point
    from scorelab.util.errors import ConfigError
    cases = [(["ckpt_mode=warm"], "ckpt_mode=warm: must be one of resume, finetune"),
             ([f"ckpt_path={source}", "resume=true"], "pass one of them"),
             (["ckpt_path=/no/such.ckpt"], "ckpt_path=/no/such.ckpt: no such checkpoint"),
             ([f"ckpt_path={source}", "backbone.width=32"],
              "ckpt_path: .* was trained with another config")]
    for overrides, message in cases:
        run = build(compose_train([*TOY, *overrides], tmp_path / "bad"))
        with pytest.raises(ConfigError, match=message):
            starting_point(run)
