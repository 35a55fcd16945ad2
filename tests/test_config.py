"""Every config group composes and instantiates; every SDE x head trains (on the toy)."""

import lightning as L
import pytest
import torch

from conftest import compose_train, options
from scorelab.conf import CONF_DIR
from scorelab.cli.build import build_datamodule, build_module, make, sampler_settings
from scorelab.data import DataMissingError
from scorelab.paths.interpolants import LinearPath
from scorelab.util.errors import ConfigError


def test_default_config_is_the_mnist5k_experiment(tmp_path):
    cfg = compose_train([], tmp_path)
    named = compose_train(["experiment=mnist5k_fm"], tmp_path)
    assert cfg.data._target_.endswith("MNIST5kDataModule")
    assert cfg.path._target_.endswith("LinearPath") and cfg.head.name == "velocity"
    assert cfg.loss.weighting == "velocity" and cfg.loss.time_sampling == "logit_normal"
    assert cfg.backbone._target_.endswith("UNet") and cfg.sampler.name == "edm"
    assert cfg.optim.lr_decay == "cosine"
    for key in ("data", "path", "head", "backbone", "loss", "optim", "sampler", "trainer"):
        assert cfg[key] == named[key]
    # the diffusion recipe and Score SDE's stay one override away
    v = compose_train(["experiment=mnist5k_vp_v"], tmp_path)
    assert v.path._target_.endswith("VPSDE") and v.head.name == "v"
    assert v.loss.weighting == "none" and v.loss.time_sampling == "uniform"
    for key in ("data", "backbone", "optim", "sampler", "trainer"):
        assert v[key] == cfg[key]
    eps = compose_train(["experiment=mnist5k_vp_eps"], tmp_path)
    assert eps.head.name == "eps" and eps.optim.lr_decay == "none"
    assert eps.trainer.max_steps == 800 and eps.sampler.name == "pc"


def test_command_line_overrides_beat_experiment(tmp_path):
    cfg = compose_train(["experiment=mnist5k_vp_eps", "sde=subvp", "head=x0"], tmp_path)
    assert cfg.path._target_.endswith("SubVPSDE") and cfg.head.name == "x0"


def test_path_is_another_name_for_the_sde_group(tmp_path):
    from scorelab.cli.build import check_path_choice

    cfg = compose_train(["path=linear"], tmp_path)
    assert cfg.path._target_.endswith("LinearPath")
    check_path_choice()
    # over an experiment's SDE too
    cfg = compose_train(["experiment=mnist5k_vp_eps", "path=cosine"], tmp_path)
    assert cfg.path._target_.endswith("CosinePath")
    check_path_choice()
    assert options("path") == options("sde")
    compose_train(["sde=ve", "path=linear"], tmp_path)
    with pytest.raises(ConfigError, match="path=linear and sde=ve disagree"):
        check_path_choice()


def test_flow_matching_experiments_compose(tmp_path):
    for name in ("gmm_fm", "digits_fm", "mnist5k_fm"):
        cfg = compose_train([f"experiment={name}"], tmp_path)
        assert cfg.path._target_.endswith("LinearPath") and cfg.head.name == "velocity"
        assert cfg.loss.weighting == "velocity"
        assert cfg.sampler.name == ("edm" if name == "mnist5k_fm" else "ode")


@pytest.mark.parametrize("data,backbone", [
    ("gmm", "mlp"), ("digits", "ddpmpp_digits"), ("digits", "dit_digits"), ("mnist5k", "unet"),
    ("mnist5k", "ddpmpp_mnist"), ("mnist5k", "ncsnpp_mnist"), ("mnist5k", "dit_mnist")])
def test_flow_matching_composes_with_backbones_and_data(tmp_path, data, backbone, one_thread):
    """path=linear head=velocity loss=flow_matching on each data set's backbones: a finite
    loss with gradients, and a sample from pure noise through the flow ODE."""
    cfg = compose_train([f"data={data}", f"backbone={backbone}", "path=linear",
                         "head=velocity", "loss=flow_matching", "sampler=euler",
                         "sampler.steps=2"], tmp_path)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm.shape, dm.num_classes, dm.is_image)
    x = torch.stack([dm.val_set[i][0] for i in range(4)])
    loss = module.loss_fn(module.model, x, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0
                                        for p in module.parameters())
    res = module.sample(2, generator=torch.Generator().manual_seed(0))
    assert res.x.shape == (2, *dm.shape) and torch.isfinite(res.x).all() and res.nfe == 2


FLOWS = ("linear", "cosine")
# The pairs trained in the default run: every head and every path at least once (the other
# trained pairs are slow-marked; the eps / score heads on a flow path are refused at once,
# always checked).
DEFAULT_PAIRS = {("eps", "vp"), ("score", "ve"), ("x0", "subvp"), ("v", "cosine"),
                 ("velocity", "linear"), ("edm", "vp"), ("velocity", "vp")}


def _head_path_pairs():
    return [pytest.param(head, path, marks=() if (head, path) in DEFAULT_PAIRS or (
                path in FLOWS and head in ("eps", "score")) else pytest.mark.slow)
            for head in options("head") for path in options("path")]


@pytest.mark.parametrize("head,path", _head_path_pairs())
def test_sde_x_head_trains_on_toy(tmp_path, path, head):
    # the toy's Euler–Maruyama sampler needs a finite g(T); flow paths take SiT's diffusion
    flow = path in FLOWS
    cfg = compose_train(["experiment=gmm_vp_eps", f"path={path}", f"head={head}",
                         "data.n_samples=2000", "path.N=100"]
                        + (["sampler=sde_sigma"] if flow else []), tmp_path)
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    if flow and head in ("eps", "score"):
        with pytest.raises(ConfigError, match=f"head={head}, path={path}, .*: the {head} head cannot give x0"):
            build_module(cfg, dm.shape, dm.num_classes, dm.is_image)
        return
    module = build_module(cfg, dm.shape, dm.num_classes, dm.is_image)
    x = torch.stack([dm.val_set[i][0] for i in range(len(dm.val_set))])

    def val_loss():
        return module.loss_fn(module.model, x, generator=torch.Generator().manual_seed(0)).item()

    before = val_loss()
    trainer = L.Trainer(max_steps=250, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, accelerator="cpu")
    trainer.fit(module, datamodule=dm)
    after = val_loss()
    # every combination learns (the slowest, the velocity head on VP, gains 12 % in 250
    # steps); how well is the oracle tests' business
    assert torch.isfinite(torch.tensor(after)) and after < 0.9 * before


def gaussian_average_velocity(mean, std):
    """u(z, r, t) of N(mean, std^2 I) on the linear path: the flow map is affine,
    z_r = (1 - r) m + (s_r / s_t) (z_t - (1 - t) m), s_t^2 = (1 - t)^2 std^2 + t^2."""
    from scorelab.models.heads import VelocityHead
    from scorelab.models.prediction import Prediction, prediction_fn
    path = LinearPath()

    def model(x, t, r):
        t_, r_ = t[:, None], r[:, None]
        s_t = ((1 - t_) ** 2 * std ** 2 + t_ ** 2).sqrt()
        s_r = ((1 - r_) ** 2 * std ** 2 + r_ ** 2).sqrt()
        z_r = (1 - r_) * mean + s_r / s_t * (x - (1 - t_) * mean)
        return Prediction.from_head(VelocityHead(), (x - z_r) / (t_ - r_), x,
                                    path.coefficients(t, like=x))
    return prediction_fn(model)


def gaussian_consistency_function(path, mean, std, sigma_min=0.002):
    """f(x, t) of N(mean, std^2 I): the affine flow map to the level sigma_min, in EDM's
    units y = x / alpha, y' = m + sqrt((std^2 + s'^2) / (std^2 + s^2)) (y - m)."""
    from scorelab.models.prediction import Prediction, prediction_fn

    def model(x, t):
        alpha, sigma = (v[:, None] for v in path.alpha_sigma(t))
        s = sigma / alpha
        y = mean + ((std ** 2 + sigma_min ** 2) / (std ** 2 + s * s)).sqrt() * (x / alpha - mean)
        return Prediction.from_x0(path, x, t, y)
    return prediction_fn(model)


@pytest.mark.parametrize("sampler", options("sampler"))
def test_sampler_configs_carry_their_options_and_sample_a_gaussian(tmp_path, sampler,
                                                                   one_thread):
    """Every option of the group's yaml reaches the sampler, and the configured sampler
    (its own steps and options) run with the exact score of N(m, 0.4^2 I) returns that
    Gaussian: mean within 0.05, std within 0.06 (measured: <= 0.015 and <= 0.043, the
    latter annealed Langevin's own bias, run on VE as NCSN does)."""
    from omegaconf import OmegaConf

    from scorelab.models.mixture import GaussianMixture
    from scorelab.sampling import sample
    from scorelab.paths.sde import VESDE, VPSDE

    cfg = compose_train([f"sampler={sampler}"], tmp_path)
    if sampler == "checkpoint":
        with pytest.raises(ConfigError, match="no sampler name"):
            sampler_settings(cfg.sampler)
        return
    settings = sampler_settings(cfg.sampler)
    yaml = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "sampler" / f"{sampler}.yaml"))
    assert {k: settings[k] for k in yaml} == yaml
    mean, std = torch.tensor([[0.5, -0.3]]), 0.4
    path = VESDE(sigma_min=0.01, sigma_max=50.0) if sampler == "ald" else VPSDE()
    opts = dict(settings)
    name, steps = opts.pop("name"), opts.pop("steps")
    model = GaussianMixture(mean, torch.tensor([std])).score_fn(path)
    if sampler == "meanflow":        # a two-time model: the Gaussian's exact average velocity
        path, model = LinearPath(), gaussian_average_velocity(mean, std)
    if sampler == "consistency":     # the Gaussian's exact consistency function
        model = gaussian_consistency_function(path, mean, std)
    x = sample(model, path, (2000, 2), name,
               steps=steps, generator=torch.Generator().manual_seed(0), **opts).x
    assert (x.mean(0) - mean[0]).abs().max() < 0.05
    assert (x.std(0) - std).abs().max() < 0.06, x.std(0)


@pytest.mark.parametrize("data", options("data"))
def test_data_configs(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)          # relative data roots resolve inside tmp_path
    cfg = compose_train([f"data={data}"], tmp_path)
    if data in ("mnist", "cifar10", "imagefolder"):
        with pytest.raises(DataMissingError, match=f"data={data}"):
            dm = build_datamodule(cfg)
            dm.setup("fit")
        return
    dm = build_datamodule(cfg)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == dm.shape and y.dtype == torch.long
    if dm.is_image:
        assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9 and x.max() > 0.9


@pytest.mark.parametrize("group", ["logger", "callbacks", "optim"])
def test_other_groups_instantiate(tmp_path, group):
    for option in options(group):
        cfg = compose_train([f"{group}={option}"], tmp_path)
        node = cfg[group]
        if group == "optim":
            # the configured optimiser, whose first step on |p|^2 is the closed form: Adam's
            # m / sqrt(v) is g / |g| at step 1, after AdamW's decoupled decay p (1 - lr wd)
            p0 = torch.tensor([1.0, -2.0])
            p = torch.nn.Parameter(p0.clone())
            opt = make(node, "optimizer")([p])
            conf = node.optimizer
            assert type(opt).__name__ == conf._target_.rsplit(".", 1)[-1], option
            lr, wd, eps = conf.lr, conf.weight_decay, conf.eps
            assert opt.param_groups[0]["betas"] == tuple(conf.betas)
            (p ** 2).sum().backward()
            opt.step()
            decoupled = isinstance(opt, torch.optim.AdamW)
            g = 2 * p0 if decoupled else 2 * p0 + wd * p0
            start = p0 * (1 - lr * wd) if decoupled else p0
            torch.testing.assert_close(p.detach(), start - lr * g / (g.abs() + eps))
        elif group == "callbacks":
            for name in node:
                assert isinstance(make(node, name), L.Callback), (option, name)
        else:
            from scorelab.cli.loggers import build_logger, close_loggers
            loggers = build_logger(cfg, tmp_path)
            kinds = sorted(type(lg).__name__ for lg in loggers)
            assert kinds == LOGGERS[option], option
            close_loggers(loggers)


# what each logger option builds
LOGGERS = {"none": [], "csv": ["CSVLogger"], "tensorboard": ["TensorBoardLogger"],
           "wandb": ["WandbLogger"], "many": ["CSVLogger", "TensorBoardLogger", "WandbLogger"]}


def test_backbone_data_mismatch_is_a_config_error(tmp_path):
    cfg = compose_train(["data=gmm", "backbone=unet"], tmp_path)
    dm = build_datamodule(cfg)
    with pytest.raises(ConfigError, match="backbone.*image data"):
        build_module(cfg, dm.shape, dm.num_classes, dm.is_image)


def test_preset_input_shape_is_checked_against_the_data(tmp_path):
    """A preset fixes its published input shape: other data is refused with a way out."""
    cfg = compose_train(["data=digits", "backbone=ddpmpp_mnist"], tmp_path)
    with pytest.raises(ConfigError, match=r"built for inputs \[1, 28, 28\] but the data gives "
                                          r"\[1, 8, 8\].*backbone.data_shape=null"):
        build_module(cfg, (1, 8, 8), 10)
    cfg = compose_train(["data=digits", "backbone=ddpmpp_mnist", "backbone.data_shape=null",
                         "backbone.channel_mult=[1,2]", "backbone.attn_resolutions=[4]"],
                        tmp_path)
    module = build_module(cfg, (1, 8, 8), 10)
    assert module.model.backbone.data_shape == (1, 8, 8)


def test_conditional_class_count_comes_from_preset_or_data(tmp_path):
    cfg = compose_train(["data=digits", "backbone=dit_digits", "conditional=true"], tmp_path)
    assert build_module(cfg, (1, 8, 8), 10).model.backbone.y_embed.num_embeddings == 11
    cfg = compose_train(["data=digits", "backbone=dit_digits", "conditional=true",
                         "backbone.num_classes=5"], tmp_path)
    with pytest.raises(ConfigError, match="backbone.num_classes=5 but the data has 10"):
        build_module(cfg, (1, 8, 8), 10)
    cfg = compose_train(["data=digits", "backbone=dit_digits"], tmp_path)    # unconditional
    assert build_module(cfg, (1, 8, 8), 10).model.backbone.y_embed is None


def test_speed_switches_resolve_to_off_on_cpu_and_validate():
    from scorelab.util.speed import check_switches, resolve_precision
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    check_switches({"compile": "auto", "channels_last": False, "fused_optimizer": "auto"},
                   gpu=False)
    with pytest.raises(ValueError, match="speed.compile must be true, false or auto"):
        check_switches({"compile": "yes"}, gpu=False)
    check_switches({"fused_optimizer": True}, gpu=False)     # torch has CPU fused kernels


def test_bf16_autocast_training_step_on_cpu(tmp_path):
    """trainer.precision=bf16-mixed (the GPU default) runs the whole step, here on CPU."""
    cfg = compose_train(["data=digits", "backbone=ddpmpp_digits", "backbone.channels=8"],
                        tmp_path)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm.shape, dm.num_classes, dm.is_image)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, accelerator="cpu", precision="bf16-mixed")
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3
    assert all(p.dtype == torch.float32 for p in module.parameters())    # fp32 master weights


@pytest.mark.parametrize("clip", [1.0, None])
def test_fused_optimizer_skips_a_nonfinite_step_on_device_and_reports_it(tmp_path, clip):
    """The GPU default (fused Adam) has no host sync per step: NaN gradients make the fused
    kernel skip its update (found_inf), and the run stops at the next check."""
    from torch.utils.data import DataLoader, TensorDataset

    from scorelab.util.errors import NonFiniteLossError
    cfg = compose_train(["experiment=gmm_vp_eps", "speed.fused_optimizer=true"], tmp_path)
    module = build_module(cfg, (2,), 0, is_image=False)
    module.NAN_CHECK_EVERY = 5
    x = torch.randn(16 * 8, 2)
    x[16 * 3] = float("nan")                         # the 4th batch
    data = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=16)
    trainer = L.Trainer(max_steps=8, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", limit_val_batches=0, gradient_clip_val=clip)
    with pytest.raises(NonFiniteLossError,
                       match=r"gradients were non-finite in 1 step\(s\) up to step 5"):
        trainer.fit(module, train_dataloaders=data)
    opt = trainer.optimizers[0]
    assert opt.defaults["fused"]
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert {int(st["step"]) for st in opt.state.values()} == {4}    # 5 steps, 1 skipped
