"""Where the modules of scorelab 0.1 (one flat package) live now, so that the ``_target_``
paths stored in the configs of checkpoints written before the move still instantiate."""

from __future__ import annotations

import importlib
import re

# old module -> new module (classes and functions kept their names)
MOVED_MODULES = {
    "scorelab.sde": "scorelab.paths.sde",
    "scorelab.paths": "scorelab.paths.interpolants",
    "scorelab.schedules": "scorelab.paths.schedules",
    "scorelab.heads": "scorelab.models.heads",
    "scorelab.prediction": "scorelab.models.prediction",
    "scorelab.score": "scorelab.models.score",
    "scorelab.conditioning": "scorelab.models.conditioning",
    "scorelab.classifier": "scorelab.models.classifier",
    "scorelab.mixture": "scorelab.models.mixture",
    "scorelab.guidance": "scorelab.guidance.predictions",
    "scorelab.controllable": "scorelab.guidance.controllable",
    "scorelab.likelihood": "scorelab.likelihood.pf_ode",
    "scorelab.module": "scorelab.training.diffusion_module",
    "scorelab.auxiliary_module": "scorelab.training.auxiliary_module",
    "scorelab.losses": "scorelab.training.losses",
    "scorelab.latent": "scorelab.latent.space",
    "scorelab.autoencoder": "scorelab.latent.autoencoder",
    "scorelab.diffusers_autoencoder": "scorelab.latent.diffusers",
    "scorelab.data.latent": "scorelab.latent.datamodule",
    "scorelab.checks": "scorelab.util.checks",
    "scorelab.errors": "scorelab.util.errors",
    "scorelab.progress": "scorelab.util.progress",
    "scorelab.interrupt": "scorelab.util.interrupt",
    "scorelab.speed": "scorelab.util.speed",
    "scorelab.visualize": "scorelab.util.visualize",
    "scorelab.summarize": "scorelab.cli.summarize",
}
# old callbacks module, split by concern (0.1's FID / bits-per-dim callbacks have no heir with
# their arguments: the metric registry's one ``scorelab.metrics.callbacks.Metrics`` replaced
# them; checkpoints never instantiate callbacks)
MOVED_NAMES = {
    "scorelab.callbacks.EMA": "scorelab.training.callbacks.EMA",
    "scorelab.callbacks.Checkpoint": "scorelab.training.callbacks.Checkpoint",
    "scorelab.callbacks.SampleGrid": "scorelab.training.callbacks.SampleGrid",
    "scorelab.callbacks.RandomStates": "scorelab.training.callbacks.RandomStates",
}
_OLD = re.compile(r"^(scorelab\.[A-Za-z0-9_.]+)\.([A-Za-z0-9_]+)$")


def current_target(target: str) -> str:
    """The dotted path ``target`` (``module.name``) written by scorelab 0.1, at its home now;
    a path that resolves today (``scorelab.paths.VPSDE``, the package's export, was also
    0.1's module ``scorelab.paths``) and any other string unchanged."""
    if target in MOVED_NAMES:
        return MOVED_NAMES[target]
    m = _OLD.match(target)
    if m and m.group(1) in MOVED_MODULES and not _resolves(m.group(1), m.group(2)):
        return f"{MOVED_MODULES[m.group(1)]}.{m.group(2)}"
    return target


def _resolves(module: str, name: str) -> bool:
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def upgrade_targets(node):
    """A plain config (dicts, lists) with every ``_target_`` moved to its current home."""
    if isinstance(node, dict):
        return {k: (current_target(v) if k == "_target_" and isinstance(v, str)
                    else upgrade_targets(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [upgrade_targets(v) for v in node]
    return node


def upgrade_config(config: dict) -> dict:
    """A run's config as scorelab 0.1 stored it in a checkpoint, in today's layout: moved
    ``_target_`` paths, and the forward process under ``path`` (0.1 named the node ``sde``)."""
    config = upgrade_targets(config)
    if "sde" in config and "path" not in config:
        config = {("path" if k == "sde" else k): v for k, v in config.items()}
    return config
