"""Turn a composed config into objects, checking combinations before anything runs."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from scorelab.data import DiffusionDataModule
from scorelab.data.reflow import ReflowDataModule
from scorelab.latent import diffusers as hf
from scorelab.latent.autoencoder import KLAutoencoder
from scorelab.latent.space import LatentSpace
from scorelab.models.classifier import NoisyClassifier
from scorelab.models.conditioning import check_p_uncond
from scorelab.models.score import ScoreModel
from scorelab.models.clip_text import ClipTokenizer
from scorelab.models.text import WordTokenizer
from scorelab.models.text_encoders import tokenizer_from_state
from scorelab.sampling import DEFAULT_SAMPLER, check_options, check_sampler, get_sampler
from scorelab.sampling.registry import TWO_TIME
from scorelab.training.auxiliary_module import AutoencoderModule, ClassifierModule
from scorelab.training.callbacks.divergence import FACTOR_RULE as DIVERGENCE_FACTOR_RULE
from scorelab.training.diffusion_module import LR_DECAY_RULE, DiffusionModule
from scorelab.training.losses import DenoisingLoss
from scorelab.util.checks import Rule, check_value, integer, optional, positive
from scorelab.util.errors import ConfigError, ScorelabError
from scorelab.util.moved import upgrade_config, upgrade_targets
from scorelab.util.speed import check_switches

log = logging.getLogger("scorelab")


def make(cfg: DictConfig, group: str, /, **kwargs):
    """instantiate(cfg[group]) with errors that name the config group (``group`` may be a
    dotted key, e.g. "callbacks.metrics")."""
    node = OmegaConf.select(cfg, group)
    if node is None:
        raise ConfigError(f"config group {group!r} is missing")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, ScorelabError):
            raise cause from None
        raise ConfigError(_naming(group, str(cause))) from None


def _naming(group: str, message: str) -> str:
    """``message`` prefixed with the config group, unless it already names a key of it
    (value rules write "data.n_components: must be ...")."""
    return message if message.startswith(group) else f"{group}: {message}"


def plain(node) -> dict:
    """A config node (or a mapping, or None: empty) as a plain dict, interpolations
    resolved."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node or {})


def given(settings: dict, key: str):
    """The value of ``key``, None when absent, empty or still Hydra's mandatory ``???``."""
    value = settings.get(key)
    return None if value in (None, "", "???") else value


def chosen(group: str) -> str:
    """``group=<option>`` as this run chose it (``sde=`` stands for ``path``), for messages
    that name the override; the bare group name where Hydra did not compose the config (a
    checkpoint's)."""
    from hydra.core.hydra_config import HydraConfig
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        option = (group == "path" and choices.get("sde")) or choices.get(group)
        if option:
            return f"{group}={option}"
    return group


def check_sampler_guidance(settings: dict, guidance) -> None:
    """A two-time sampler (MeanFlow's jumps) takes guidance=cfg (the average velocities
    guided by the same affine rule, a heuristic: MeanFlow trains its guidance into u) or none;
    classifier guidance and autoguidance act at one time."""
    kind = getattr(guidance, "kind", "none")
    if settings.get("name") in TWO_TIME and kind not in ("none", "cfg"):
        raise ConfigError(f"sampler={settings['name']} jumps over intervals [r, t]; "
                          f"guidance={kind} acts at one time: use guidance=cfg or none")


def sampler_settings(node, path=None, model=None, guidance=None) -> dict:
    """A sampler config node as a plain dict {name, steps, **options}, validated (and, given
    the model's ``path``, checked to run on that path; given the ``ScoreModel``, that it has
    the learned variances variance=learned reads; given the guidance, that the sampler can
    take it)."""
    settings = plain(node)
    if not settings.get("name"):
        raise ConfigError("sampler: no sampler name given (sampler=<name>)")
    try:
        get_sampler(settings["name"])
        options = {k: v for k, v in settings.items() if k != "name"}
        check_options(settings["name"], {"steps": settings.get("steps"), **options})
        if path is not None:
            check_sampler(path, **settings)
    except ValueError as e:          # the registry's own rules, as sample() checks them
        raise ConfigError(_naming("sampler", str(e))) from None
    check_sampler_guidance(settings, guidance)
    if settings["name"] in TWO_TIME and model is not None and not model.takes_interval:
        raise ConfigError(f"sampler={settings['name']} jumps with a two-time model's average "
                          f"velocity, and this model takes one time (train with loss=meanflow "
                          f"backbone.interval=true; a flow model samples with sampler=euler)")
    if settings.get("variance") == "learned" and model is not None \
            and not model.learns_variance:
        raise ConfigError("sampler.variance=learned reads the model's learned variance "
                          "channels, and this model has none (train with "
                          "backbone.learn_sigma=true loss=hybrid)")
    return settings


def check_config_values(cfg: DictConfig, rules: dict[str, Rule]) -> None:
    """Check config values by dotted key (``{"trainer.max_steps": integer(1)}``) before
    anything runs; a missing key is skipped. ConfigError names the key."""
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING:
            continue
        try:
            check_value(key, value, rule)
        except ValueError as e:
            raise ConfigError(str(e)) from None


_MISSING = object()
_LIMIT = Rule(lambda v: v == -1 or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
              "an integer >= 1 (or -1: no limit)")
# Values of train.py's config that no constructor sees before training starts.
TRAIN_RULES = {"seed": integer(), "num_samples": integer(1),
               "optim.warmup_steps": integer(0), "optim.optimizer.lr": positive(),
               "optim.lr_decay": LR_DECAY_RULE, "divergence_factor": DIVERGENCE_FACTOR_RULE,
               "trainer.max_steps": _LIMIT, "trainer.max_epochs": optional(_LIMIT),
               "trainer.log_every_n_steps": integer(1),
               "trainer.gradient_clip_val": optional(positive())}


def check_training_config(cfg: DictConfig) -> None:
    """train.py's start-up checks: ``TRAIN_RULES``, a training run that ends, and the
    optimizer's own argument checks (run on a dummy parameter, so that e.g. betas outside
    [0, 1) fail now rather than in the first training step)."""
    check_config_values(cfg, TRAIN_RULES)
    check_path_choice()
    try:                  # the switches' values (their "auto" is resolved with the Trainer)
        check_switches(cfg.get("speed") or {}, gpu=False)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    trainer = cfg.get("trainer") or {}
    if trainer.get("max_steps", -1) == -1 and trainer.get("max_epochs", None) == -1:
        raise ConfigError("trainer.max_steps=-1 with trainer.max_epochs=-1 never stops; "
                          "set trainer.max_steps=N")
    optimizer = make(cfg.optim, "optimizer")
    try:
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"optim.optimizer: {e}") from None


def check_path_choice() -> None:
    """``sde=X`` is ``path=X``; both given and different is an error, not a silent pick."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return
    choices = HydraConfig.get().runtime.choices
    path, sde = choices.get("path"), choices.get("sde")
    if sde is not None and path is not None and path != sde:
        raise ConfigError(f"path={path} and sde={sde} disagree (sde is another name for "
                          f"the path group): give one of them")


CONDITIONS = ("none", "class", "text")


def apply_condition(cfg: DictConfig, dm) -> None:
    """``condition=none|class|text`` (null: ``conditional`` alone says): what the model is
    conditioned on, checked against the data -- class labels need a labelled dataset, text a
    captioned one -- and written to ``conditional``, which the rest of the code reads."""
    condition = cfg.get("condition")
    if condition is None:
        return
    if condition not in CONDITIONS:
        raise ConfigError(f"condition={condition}: must be one of {', '.join(CONDITIONS)}")
    captions = getattr(dm, "tokenizer", None) is not None
    if condition == "none":
        if cfg.get("conditional"):
            raise ConfigError("condition=none and conditional=true disagree: give one of them")
    elif condition == "class" and (captions or dm.num_classes <= 0):
        raise ConfigError(f"condition=class: data={dm.name} has "
                          f"{'captions' if captions else 'no class labels'}"
                          f"{' (condition=text)' if captions else ''}")
    elif condition == "text" and not captions:
        raise ConfigError(f"condition=text: data={dm.name} has no captions (data=mnist5k_pairs, "
                          f"or data=imagefolder data.captions=true)")
    cfg.conditional = condition != "none"


def build_datamodule(cfg: DictConfig, tokenizer: dict | None = None,
                     training: bool = False) -> DiffusionDataModule:
    """The ``data`` group's DataModule. A captioned dataset feeding a model on captions
    tokenizes them with the model's tokenizer: ``tokenizer`` (a checkpoint's state), else
    for text_encoder=clip the pretrained CLIP tokenizer, else its own word tokenizer.
    ``training`` with ``teacher.ckpt`` (reflow): the teacher's pairs to train on, the real
    data to validate on; elsewhere (a student's checkpoint) the real data alone."""
    if cfg.get("data") is None:
        raise ConfigError("data: no dataset given; a published network (model=diffusers) has "
                          "none of its own: add data=<dataset> (its images, e.g. data=mnist5k)")
    dm = make(cfg, "data")
    apply_condition(cfg, dm)
    if training and (cfg.get("teacher") or {}).get("ckpt"):
        dm = reflow_data(cfg, dm)
    if getattr(dm, "tokenizer", None) is None or not cfg.get("conditional"):
        return dm
    enc = cfg.get("text_encoder") or {}
    if tokenizer is not None:
        dm.tokenizer = tokenizer_from_state(tokenizer)
    elif enc.get("name") == "clip":
        if not enc.get("pretrained"):
            raise ConfigError("text_encoder=clip needs text_encoder.pretrained: a local "
                              "directory with a CLIP text model and its tokenizer, or a hub id")
        try:
            dm.tokenizer = ClipTokenizer.from_pretrained(
                str(enc.pretrained), enc.get("context"), bool(enc.get("local_files_only", True)))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return dm


def reflow_data(cfg: DictConfig, base):
    """Reflow's pairs of the ``teacher`` checkpoint (``data.reflow``), checked at start-up:
    a pixel teacher of the same data shape and classes for a pixel student, its sampler's
    settings, the pairs directory's record. Any path: the pairs store the unit noise z, which
    the student's own prior scales."""
    opts = plain(cfg.teacher)
    try:
        teacher = LoadedCheckpoint(opts["ckpt"])
    except ConfigError as e:
        raise ConfigError(str(e).replace("ckpt=", "teacher.ckpt=", 1)) from None
    module = teacher.module
    if module.latent is not None or tuple(module.data_shape) != tuple(base.shape):
        raise ConfigError(f"teacher.ckpt={opts['ckpt']} models "
                          f"{'latents' if module.latent is not None else 'data'} shaped "
                          f"{list(module.data_shape)}, this data is {list(base.shape)}: reflow "
                          f"needs a pixel-space teacher of the same data")
    if (cfg.get("autoencoder") or {}).get("source", "none") != "none":
        raise ConfigError("teacher.ckpt (reflow) draws pixel pairs; a latent student "
                          "(autoencoder=...) would train on real latents instead: use "
                          "autoencoder=none")
    if cfg.get("conditional") and not module.takes_labels:
        raise ConfigError(f"teacher.ckpt={opts['ckpt']} is unconditional: its pairs carry no "
                          f"class, so a conditional student (conditional=true) cannot learn "
                          f"from them")
    if module.takes_labels and module.num_classes != base.num_classes:
        raise ConfigError(f"teacher.ckpt={opts['ckpt']} has {module.num_classes} classes, this "
                          f"data {base.num_classes}")
    sampler = sampler_settings(opts["sampler"], module.model.path, module.model)
    dm = ReflowDataModule(base, opts["ckpt"], sampler, opts["num_pairs"], opts["chunk"],
                          opts["dir"], opts.get("seed", 0), load_teacher=lambda _: module)
    dm.check_directory(teacher.global_step)
    return dm


def check_backbone_shape(cfg: DictConfig, data_shape) -> None:
    """A preset fixes the input shape it was published for (``backbone.data_shape``); data of
    another shape is an error unless the user sets ``backbone.data_shape=null``."""
    fixed = cfg.backbone.get("data_shape")
    if fixed is not None and tuple(fixed) != tuple(data_shape):
        raise ConfigError(
            f"backbone {cfg.backbone.get('_target_', '?').rsplit('.', 1)[-1]} preset is built "
            f"for inputs {list(fixed)} but the data gives {list(data_shape)}: pick a preset "
            f"for this shape, or set backbone.data_shape=null to build this one for the data")


def backbone_classes(cfg: DictConfig, num_classes: int) -> int:
    """Class-embedding size: 0 unless conditional; else the preset's ``num_classes`` (its
    published label count) or the dataset's, which it must cover."""
    if not cfg.conditional:
        return 0
    preset = cfg.backbone.get("num_classes")
    if preset is None:
        return num_classes
    if int(preset) < num_classes:
        raise ConfigError(f"backbone.num_classes={preset} but the data has {num_classes} "
                          f"classes; set backbone.num_classes=null to use the data's")
    return int(preset)


def text_options(cfg: DictConfig, tokenizer: dict, from_checkpoint: bool = False) -> dict:
    """The backbone's ``text`` (``build_text_encoder`` options) for a captioned dataset's
    tokenizer (``state_dict()`` of a ``WordTokenizer``, or of the ``ClipTokenizer`` that
    text_encoder=clip puts in its place) and the ``text_encoder`` group. A CLIP model's
    weights come from ``text_encoder.pretrained`` when training starts, from the
    checkpoint's state dict when it is loaded."""
    enc = cfg.get("text_encoder") or {}
    if tokenizer.get("kind") == "clip":
        return {"kind": "clip", "model_config": tokenizer["model_config"],
                "context": int(tokenizer["context"]), "empty": list(tokenizer["empty"]),
                "pretrained": None if from_checkpoint else tokenizer.get("source"),
                "local_files_only": bool(enc.get("local_files_only", True)),
                "cache": int(enc.get("cache", 0))}
    if enc.get("name", "scorelab") != "scorelab":
        raise ConfigError(f"text_encoder={enc.get('name')}: this data's captions come with "
                          f"its own word tokenizer; text_encoder=clip needs "
                          f"text_encoder.pretrained")
    return {"vocab_size": len(WordTokenizer.from_state_dict(tokenizer)),
            "context": int(tokenizer["context"]), "dim": int(enc.get("dim", 64)),
            "depth": int(enc.get("depth", 2)), "heads": int(enc.get("heads", 4))}


def build_module(cfg: DictConfig, data_shape, num_classes: int,
                 is_image: bool = True, strict_sampler: bool = True,
                 latent=None, tokenizer: dict | None = None,
                 from_checkpoint: bool = False) -> DiffusionModule:
    """The DiffusionModule of a config, for data of the given shape and classes (or, with
    ``tokenizer``, the state of a captioned dataset's ``WordTokenizer``: captions); with a
    ``LatentSpace`` (``autoencoder`` group) on its latents, the backbone built for the latent
    shape. ``strict_sampler=False`` (loading a checkpoint): a stored sampler this version does
    not know falls back to the default pc sampler with a warning instead of failing."""
    text = cfg.conditional and tokenizer is not None
    if cfg.conditional and num_classes <= 0 and not text:
        raise ConfigError("conditional=true needs a dataset with class labels or captions")
    if latent is not None and tuple(latent.data_shape) != tuple(data_shape):
        raise ConfigError(f"the autoencoder takes images {list(latent.data_shape)} but the "
                          f"data has {list(data_shape)}")
    model_shape = tuple(data_shape) if latent is None else tuple(latent.latent_shape)
    check_backbone_shape(cfg, model_shape)
    path = make(cfg, "path")
    head = make(cfg, "head")
    if text:
        if "text" not in inspect.signature(get_class(cfg.backbone._target_)).parameters:
            raise ConfigError(f"{chosen('backbone')} takes no captions: conditional=true on "
                              f"captioned data needs backbone=dit or a unet")
        backbone = make(cfg, "backbone", data_shape=model_shape, num_classes=0,
                        text=text_options(cfg, tokenizer, from_checkpoint), _convert_="all")
    else:
        backbone = make(cfg, "backbone", data_shape=model_shape,
                        num_classes=backbone_classes(cfg, num_classes))
    loss = make(cfg, "loss")
    try:
        loss.check(path, head)
    except ValueError as e:
        raise ConfigError(f"{chosen('loss')} with {chosen('path')}, {chosen('head')}: "
                          f"{e}") from None
    noise_label = cfg.get("noise_label", "sde")
    if noise_label == "log_sigma" and cfg.backbone.get("embedding") == "fourier":
        raise ConfigError("noise_label=log_sigma is a log already, but backbone.embedding="
                          "fourier embeds log(label): use backbone.embedding=positional or "
                          "noise_label=sde")
    try:
        model = ScoreModel(backbone, head, path, input_scaling=cfg.input_scaling,
                           noise_label=noise_label, boundary=getattr(loss, "boundary", None))
    except ValueError as e:
        raise ConfigError(f"{chosen('head')}, {chosen('path')}, noise_label={noise_label}: "
                          f"{e}") from None
    try:
        loss.check_model(model)
    except ValueError as e:
        raise ConfigError(f"{chosen('loss')} with {chosen('backbone')}: {e}") from None
    if getattr(loss, "teacher_ckpt", None) and not from_checkpoint:
        attach_teacher(loss, model_shape, latent)
    if hasattr(loss, "at_step") and not from_checkpoint and \
            (cfg.get("trainer") or {}).get("max_steps", -1) in (-1, None) and \
            (cfg.get("trainer") or {}).get("max_epochs") in (-1, None):
        raise ConfigError(f"{chosen('loss')}'s curriculum follows the run's length: set "
                          f"trainer.max_steps (or trainer.max_epochs)")
    if (cfg.get("teacher") or {}).get("ckpt") and not isinstance(loss, DenoisingLoss):
        raise ConfigError(f"teacher.ckpt (reflow) trains on the teacher's (noise, sample) "
                          f"pairs, which {chosen('loss')} does not take: use a denoising loss "
                          f"(loss=flow_matching)")
    try:
        sampler = sampler_settings(cfg.sampler, path, model)
    except ConfigError as e:
        if strict_sampler:
            raise
        sampler = dict(DEFAULT_SAMPLER)
        log.warning("%s; using the default sampler %s instead, which runs on every path",
                    e, sampler)
    try:
        p_uncond = check_p_uncond(cfg.get("p_uncond", 0.0))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return DiffusionModule(
        model, loss, data_shape=model_shape, num_classes=num_classes, is_image=is_image,
        conditional=cfg.conditional, p_uncond=p_uncond if cfg.conditional else 0.0,
        sampler=sampler, fused_optimizer=(cfg.get("speed") or {}).get("fused_optimizer", "auto"),
        latent=latent, tokenizer=tokenizer if text else None, **training_arguments(cfg))


def attach_teacher(loss, model_shape, latent) -> None:
    """Load a distillation loss's teacher checkpoint (its EMA weights) into the loss, after
    checking that it models the same data (only at training: a student's checkpoint
    samples without its teacher)."""
    try:
        teacher = LoadedCheckpoint(loss.teacher_ckpt)
    except ConfigError as e:
        raise ConfigError(str(e).replace("ckpt=", "loss.teacher=", 1)) from None
    module = teacher.module
    if tuple(module.data_shape) != tuple(model_shape) or \
            (module.latent is None) != (latent is None):
        where = "latents" if module.latent is not None else "pixels"
        raise ConfigError(f"loss.teacher={loss.teacher_ckpt} models {where} shaped "
                          f"{list(module.data_shape)}; this student models "
                          f"{list(model_shape)}: a teacher of the same data is needed")
    loss.set_teacher(module.model, conditional=module.conditional)


def training_arguments(cfg: DictConfig) -> dict:
    """What every module builder passes alike: the optimiser, its schedule and the config
    stored in the checkpoint."""
    return {"optimizer": make(cfg.optim, "optimizer"), "warmup_steps": cfg.optim.warmup_steps,
            "lr_decay": cfg.optim.get("lr_decay", "none"),
            "config": OmegaConf.to_container(cfg, resolve=True)}


MODELS = ("diffusion", "classifier", "autoencoder")


def build_classifier_module(cfg: DictConfig, data_shape, num_classes: int,
                            is_image: bool = True) -> ClassifierModule:
    """``model=classifier``: a noisy classifier on the config's SDE / path and noise label
    (``experiment=mnist5k_classifier``)."""
    if num_classes < 2:
        raise ConfigError("model=classifier needs a dataset with class labels")
    check_backbone_shape(cfg, data_shape)
    net = make(cfg, "backbone", data_shape=tuple(data_shape), num_classes=num_classes)
    try:
        model = NoisyClassifier(net, make(cfg, "path"), cfg.get("noise_label", "sde"),
                                cfg.input_scaling)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return ClassifierModule(model, data_shape=data_shape, num_classes=num_classes,
                            is_image=is_image, **training_arguments(cfg))


def build_autoencoder_module(cfg: DictConfig, data_shape, num_classes: int,
                             is_image: bool = True) -> AutoencoderModule:
    """``model=autoencoder``: the stage-1 KL autoencoder of latent diffusion
    (``experiment=mnist5k_autoencoder``; its network and loss in the ``backbone`` node)."""
    if not is_image:
        raise ConfigError("model=autoencoder needs image data")
    check_backbone_shape(cfg, data_shape)
    net = make(cfg, "backbone", data_shape=tuple(data_shape))
    if not isinstance(net, KLAutoencoder):
        raise ConfigError("model=autoencoder needs backbone=kl_autoencoder")
    return AutoencoderModule(net, data_shape=data_shape, num_classes=num_classes,
                             is_image=is_image, **training_arguments(cfg))


def build_any_module(cfg: DictConfig, data_shape, num_classes: int, is_image: bool = True,
                     strict_sampler: bool = True, latent=None, tokenizer: dict | None = None,
                     from_checkpoint: bool = False):
    """The module ``cfg.model`` names (``MODELS``): a DiffusionModule (on ``latent``'s
    latents when given), or the ``AuxiliaryModule`` of a classifier or an autoencoder.
    ``from_checkpoint``: built to take a checkpoint's weights (no pretrained loading)."""
    kind = cfg.get("model", "diffusion")
    if not isinstance(kind, str):
        raise ConfigError("model=diffusers is a published network for sample.py and "
                          f"evaluate.py; train.py trains model={' | '.join(MODELS)}")
    if kind not in MODELS:
        raise ConfigError(f"model={kind}: must be one of {', '.join(MODELS)}")
    if latent is not None and kind != "diffusion":
        raise ConfigError(f"model={kind} trains on pixels: autoencoder must be none")
    if kind == "classifier":
        return build_classifier_module(cfg, data_shape, num_classes, is_image)
    if kind == "autoencoder":
        return build_autoencoder_module(cfg, data_shape, num_classes, is_image)
    return build_module(cfg, data_shape, num_classes, is_image, strict_sampler, latent,
                        tokenizer, from_checkpoint)


def state_mismatch(module: torch.nn.Module, state: dict, may_lack=()) -> str | None:
    """Why ``state`` does not fit ``module`` (missing, unexpected and differently shaped
    keys, a few of each named), or None when it fits; keys containing one of ``may_lack``
    may be missing."""
    mine = module.state_dict()
    missing = [k for k in mine if k not in state and not any(p in k for p in may_lack)]
    unexpected = [k for k in state if k not in mine]
    shapes = [f"{k} {list(state[k].shape)} vs {list(mine[k].shape)}" for k in mine
              if k in state and hasattr(state[k], "shape") and state[k].shape != mine[k].shape]
    parts = [f"{name} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
             for name, keys in (("missing", missing), ("unexpected", unexpected),
                                ("shape (checkpoint vs config)", shapes)) if keys]
    return "; ".join(parts) or None


def _an(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


class LoadedCheckpoint:
    """A scorelab checkpoint read with ``weights_only=True``: its module and config.
    ``kind``: the model the checkpoint must hold (``MODELS``)."""

    def __init__(self, path: str, use_ema: bool = True, kind: str = "diffusion"):
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"ckpt={path}: no such checkpoint file")
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
            raise ConfigError(f"ckpt={path}: not a loadable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
        meta = ckpt.get("scorelab") if isinstance(ckpt, dict) else None
        if meta is None:
            raise ConfigError(f"ckpt={path}: not a scorelab checkpoint (no 'scorelab' entry)")
        self.kind = meta.get("kind", "diffusion")
        if self.kind != kind:
            raise ConfigError(f"ckpt={path}: holds {_an(self.kind)} model, not {_an(kind)} "
                              f"model")
        self.path = p
        # configs written before the package move: old module paths, the `sde` node
        self.cfg = OmegaConf.create(upgrade_config(meta["config"]))
        if "noise_label" not in self.cfg:
            # written before the label was a choice: every SDE was labelled 999 t
            self.cfg.noise_label = "time"
        self.data_shape = tuple(meta["data_shape"])
        self.num_classes = int(meta["num_classes"])
        self.is_image = bool(meta["is_image"])
        self.global_step = int(ckpt.get("global_step", 0))
        has_raw = "current_model_state" in ckpt
        self.ema = bool(use_ema and has_raw)
        if use_ema and not has_raw:
            raise ConfigError(f"ckpt={path}: holds no EMA weights (trained with "
                              f"callbacks.ema=null); pass use_ema=false")
        state = ckpt["state_dict"] if (use_ema or not has_raw) else ckpt["current_model_state"]
        latent = None
        if "latent" in meta:
            latent = latent_from_checkpoint(upgrade_targets(meta["latent"]), self.data_shape)
        self.tokenizer = meta.get("tokenizer")
        self.module = build_any_module(self.cfg, self.data_shape, self.num_classes,
                                       self.is_image, strict_sampler=False, latent=latent,
                                       tokenizer=self.tokenizer, from_checkpoint=True)
        mismatch = state_mismatch(self.module, state)
        if mismatch:
            raise ConfigError(f"ckpt={path}: its weights do not fit the network its config "
                              f"builds ({mismatch})")
        self.module.load_state_dict(state)
        self.module.eval()


def latent_from_checkpoint(meta: dict, data_shape) -> LatentSpace:
    """The latent space a diffusion checkpoint describes (its ``LatentSpace.describe()``),
    with fresh autoencoder weights: the checkpoint's state dict holds the trained ones."""
    if meta["source"] == "scorelab":
        net = make(OmegaConf.create({"autoencoder": meta["config"]}), "autoencoder",
                   data_shape=tuple(data_shape))
    else:
        net = hf.DiffusersAutoencoder(hf.from_config(meta["config"]), data_shape,
                                      meta.get("input_range", (-1.0, 1.0)))
    description = {k: v for k, v in meta.items()
                   if k in ("source", "ckpt", "global_step", "config", "pretrained",
                            "input_range")}
    fixed = meta["normalize"] == "fixed"
    return LatentSpace(net, meta["normalize"], meta["sample_posterior"],
                       meta["scale"][0] if fixed else None, meta["shift"][0] if fixed else None,
                       description)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device on this machine")
    return torch.device(name)
