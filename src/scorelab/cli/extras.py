"""The ``extras`` group at start-up (lightning-hydra-template's): the composed config printed
as a tree, and known, harmless warnings hidden."""

from __future__ import annotations

import re
import warnings

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from scorelab.util.errors import ConfigError


def config_tree(node, indent: str = "") -> list[str]:
    """The config as indented lines, one key per line, groups before their keys::

        data
          _target_: scorelab.data.MNIST5kDataModule
          batch_size: 64
    """
    lines = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{key}")
            lines += config_tree(value, indent + "  ")
        else:
            lines.append(f"{indent}{key}: {value}")
    return lines


def apply_extras(cfg: DictConfig) -> None:
    """Hide the warnings ``extras.ignore_warnings`` lists (message patterns) and print the
    resolved config when ``extras.print_config`` (first process only)."""
    extras = cfg.get("extras") or {}
    for pattern in extras.get("ignore_warnings") or []:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"extras.ignore_warnings: {pattern!r} is not a regular "
                              f"expression ({e})") from None
        warnings.filterwarnings("ignore", message=pattern)
    if extras.get("print_config") and rank_zero_only.rank == 0:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        print("\n".join(["config"] + config_tree(resolved, "  ")), flush=True)

