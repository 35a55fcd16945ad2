"""The ``guidance`` config group -> a ``scorelab.guidance.predictions`` object for a diffusion
module, with the checks that need the model (and the classifier or guide checkpoint) made at
start-up.

    guidance=none | cfg | classifier | autoguidance
    guidance.scale=W (1: no guidance)  guidance.sigma_min / sigma_max (noise-level interval)
    guidance.classifier_ckpt=PATH      (classifier)   guidance.guide_ckpt=PATH (autoguidance)
"""

from __future__ import annotations

import math

import torch
from scorelab.cli.build import LoadedCheckpoint, given, plain
from scorelab.util.errors import ConfigError
from scorelab.guidance.predictions import Autoguidance, ClassifierFree, ClassifierGuidance
from scorelab.training.diffusion_module import DiffusionModule


def _interval(g: dict) -> dict:
    return {"scale": g.get("scale", 1.0), "sigma_min": g.get("sigma_min", 0.0),
            "sigma_max": g.get("sigma_max", math.inf)}


def _same_model_space(what: str, other: LoadedCheckpoint, module: DiffusionModule) -> None:
    """A classifier or guide must live on the same path, data shape (the same latent space
    for a latent model) and classes."""
    mine = module.config
    theirs = plain(other.cfg)
    for key in ("path", "noise_label"):
        if mine.get(key) != theirs.get(key):
            raise ConfigError(f"guidance.{what}={other.path}: trained with {key}="
                              f"{theirs.get(key)}, but the model has {key}={mine.get(key)}")
    if tuple(other.module.data_shape) != tuple(module.data_shape) \
            or other.num_classes != module.num_classes:
        raise ConfigError(f"guidance.{what}={other.path}: data shape "
                          f"{list(other.module.data_shape)} with {other.num_classes} classes, "
                          f"but the model's is {list(module.data_shape)} with "
                          f"{module.num_classes}")
    space = [getattr(m, "latent", None) for m in (other.module, module)]
    if any(s is not None for s in space) and (
            None in space or space[0].describe() != space[1].describe()
            or not all(torch.equal(a, b) for a, b in zip(space[0].state_dict().values(),
                                                         space[1].state_dict().values()))):
        raise ConfigError(f"guidance.{what}={other.path}: not in the model's latent space "
                          f"(a guide must use the same autoencoder, shift and scale)")


def _cfg(g: dict, module: DiffusionModule):
    if not module.conditional:
        raise ConfigError("guidance=cfg needs a conditional model (trained with "
                          "conditional=true)")
    if module.p_uncond <= 0:
        raise ConfigError("guidance=cfg needs a model trained with label dropout (p_uncond > "
                          "0), which learns the unconditional prediction; this one had none")
    return ClassifierFree(**_interval(g))


def _classifier(g: dict, module: DiffusionModule):
    if given(g, "classifier_ckpt") is None:
        raise ConfigError("guidance=classifier needs guidance.classifier_ckpt=PATH (train one "
                          "with python train.py experiment=mnist5k_classifier)")
    if module.num_classes < 2:
        raise ConfigError("guidance=classifier needs a dataset with class labels")
    loaded = LoadedCheckpoint(g["classifier_ckpt"], use_ema=g.get("use_ema", True),
                              kind="classifier")
    _same_model_space("classifier_ckpt", loaded, module)
    classifier = loaded.module.model
    return ClassifierGuidance(classifier, classifier_module=classifier, **_interval(g))


def _autoguidance(g: dict, module: DiffusionModule):
    if given(g, "guide_ckpt") is None:
        raise ConfigError("guidance=autoguidance needs guidance.guide_ckpt=PATH (a weaker "
                          "model: an earlier checkpoint or a smaller network)")
    loaded = LoadedCheckpoint(g["guide_ckpt"], use_ema=g.get("use_ema", True))
    _same_model_space("guide_ckpt", loaded, module)
    if loaded.module.conditional != module.conditional:
        raise ConfigError(f"guidance.guide_ckpt={loaded.path}: the guide must have the "
                          f"model's conditioning (conditional={module.conditional})")
    guide = loaded.module.model
    return Autoguidance(guide.prediction, guide_module=guide, **_interval(g))


GUIDANCE = {"cfg": _cfg, "classifier": _classifier, "autoguidance": _autoguidance}


def build_guidance(node, module: DiffusionModule):
    """The guidance a ``guidance`` config node asks for (None for ``none`` / a missing node)."""
    g = plain(node)
    name = g.get("name", "none")
    if name in (None, "none"):
        return None
    if name not in GUIDANCE:
        raise ConfigError(f"guidance={name}: unknown; choose from none, {', '.join(GUIDANCE)}")
    try:
        return GUIDANCE[name](g, module)
    except ValueError as e:
        raise ConfigError(str(e)) from None
