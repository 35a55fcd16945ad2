"""Speed switches for training: precision, torch.compile, channels_last, fused optimizers.

Each switch takes true, false or "auto"; "auto" turns it on where the hardware is known to
profit (a CUDA device) and off on CPU, where compilation costs minutes and bf16 has no fast
kernels on most machines. The switches never change what is computed beyond rounding.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("scorelab")


def _on(value, gpu: bool, name: str) -> bool:
    if value == "auto" or value is None:
        return gpu
    if isinstance(value, bool):
        return value
    raise ValueError(f"speed.{name} must be true, false or auto, got {value!r}")


def uses_gpu(accelerator: str) -> bool:
    """Whether a Trainer with this ``accelerator`` runs on a CUDA device."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision, accelerator: str = "auto") -> str:
    """Trainer precision; "auto" is bf16 autocast on a GPU that supports bf16, else fp32."""
    if precision != "auto":
        return str(precision)
    if uses_gpu(accelerator) and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def check_switches(settings: dict, gpu: bool) -> None:
    """Validate the ``speed`` config before anything is built or trained."""
    for name in ("compile", "channels_last", "fused_optimizer"):
        _on(settings.get(name, "auto"), gpu, name)


def apply_speed(backbone: nn.Module, compile="auto", channels_last="auto",
                gpu: bool = False) -> dict:
    """Apply the backbone switches in place and return what was applied.

    channels_last: only for backbones that offer ``use_channels_last()`` (the UNet).
    compile: ``nn.Module.compile`` keeps parameter names, so checkpoints stay loadable
    by an uncompiled model.
    """
    applied = {"channels_last": False, "compile": False}
    if _on(channels_last, gpu, "channels_last") and hasattr(backbone, "use_channels_last"):
        backbone.use_channels_last()
        applied["channels_last"] = True
    if _on(compile, gpu, "compile"):
        backbone.compile()
        applied["compile"] = True
    return applied


def fused_optimizer(value, params) -> bool:
    """Whether to ask the optimiser for its fused kernels ("auto": all parameters on CUDA;
    true also works on CPU, where torch has fused Adam/AdamW kernels too)."""
    params = list(params)
    return _on(value, bool(params) and all(p.is_cuda for p in params), "fused_optimizer")
