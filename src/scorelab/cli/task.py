"""sample.py's ``task`` group: generate (default), inpaint or colorize with any sampler.

    python sample.py ckpt=PATH task=inpaint task.mask=centre_square task.index=0
    python sample.py ckpt=PATH task=inpaint task.mask=hole.png task.image=digit.png
    python sample.py ckpt=PATH task=colorize task.image=grey.png task.n_resample=5

Conditioning images come from the checkpoint's dataset (validation split; sample i uses
image ``index + i``) or from ``image`` (one file for every sample). Masks are named patterns
(``controllable.MASKS``) or a file whose non-zero pixels are the hole to fill.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scorelab.cli.build import build_datamodule, plain
from scorelab.data.base import to_unit_range
from scorelab.guidance.controllable import (MASKS, check_resampling, colorization,
                                            controlled_sample, grey_to_rgb, inpainting,
                                            named_mask)
from scorelab.util.errors import ConfigError

TASKS = ("generate", "inpaint", "colorize")


def task_settings(node) -> dict:
    task = plain(node)
    if task.get("name", "generate") not in TASKS:
        raise ConfigError(f"task={task.get('name')}: choose from {', '.join(TASKS)}")
    try:
        check_resampling(task.get("jump_length", 1), task.get("n_resample", 1))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return task


def _read_image(path: str, what: str, channels: int | None = None) -> torch.Tensor:
    """An image file as [C, H, W] in [-1, 1] (``channels`` 1: grey, 3: RGB, None: as is)."""
    from torchvision.io import ImageReadMode, decode_image

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"task.{what}={path}: no such file")
    mode = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}.get(channels, ImageReadMode.UNCHANGED)
    try:
        img = decode_image(str(p), mode=mode)
    except RuntimeError as e:
        raise ConfigError(f"task.{what}={path}: not a readable image ({e})") from None
    return to_unit_range(img, 255.0)


def _check_size(img: torch.Tensor, shape, what: str, path: str) -> None:
    if tuple(img.shape[-2:]) != tuple(shape[-2:]):
        raise ConfigError(f"task.{what}={path}: image is {img.shape[-2]}x{img.shape[-1]}, the "
                          f"model's data is {shape[-2]}x{shape[-1]}")


def observations(task: dict, loaded, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(n conditioning images [n, C, H, W] in [-1, 1], their dataset labels -- or captions'
    token ids -- or None)."""
    shape = loaded.data_shape
    if task.get("image"):
        colour = task["name"] == "colorize"
        img = _read_image(task["image"], "image", 1 if colour else shape[0])
        _check_size(img, shape, "image", task["image"])
        img = grey_to_rgb(img[None]) if colour else img[None]
        return img.expand(n, *img.shape[1:]).clone(), None
    dm = build_datamodule(loaded.cfg, loaded.tokenizer)
    dm.setup("validate")
    start = int(task.get("index", 0))
    if not 0 <= start or start + n > len(dm.val_set):
        raise ConfigError(f"task.index={start}: images {start}..{start + n - 1} asked for, the "
                          f"validation split has {len(dm.val_set)}")
    items = [dm.val_set[start + i] for i in range(n)]
    # (labels [n], or a captioned dataset's token ids [n, L])
    return torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])


def hole_mask(task: dict, shape) -> torch.Tensor:
    """The hole [H, W] (True: to generate) of ``task.mask``: a pattern name or a file."""
    mask = task.get("mask") or "centre_square"
    if mask in MASKS:
        return named_mask(mask, shape[-2], shape[-1], int(task.get("mask_seed", 0)))
    img = _read_image(mask, "mask", 1)
    _check_size(img, shape, "mask", mask)
    return img[0] > -1.0


def _check_model(task: dict, loaded) -> None:
    """Whether the loaded model can take the constraint of ``task`` (not ``generate``)."""
    if not loaded.is_image:
        raise ConfigError(f"task={task['name']} needs image data")
    if loaded.module.latent is not None:
        raise ConfigError(f"task={task['name']} constrains pixels, but this model generates "
                          f"an autoencoder's latents (a latent model); use task=generate")
    if task["name"] == "colorize" and loaded.data_shape[0] != 3:
        raise ConfigError(f"task=colorize needs RGB data (3 channels); the model's data has "
                          f"{loaded.data_shape[0]}")


def constraint_for(task: dict, loaded, observation: torch.Tensor):
    """The ``Constraint`` of the task (checked against the data before sampling)."""
    _check_model(task, loaded)
    if task["name"] == "colorize":
        return colorization(observation)
    return inpainting(observation, hole_mask(task, loaded.data_shape)[None, None])


def check_task(task: dict, loaded) -> None:
    """Start-up checks that need no images."""
    if task["name"] == "generate":
        return
    _check_model(task, loaded)
    if task["name"] == "inpaint":
        hole_mask(task, loaded.data_shape)


def draw_controlled(task: dict, loaded, settings: dict, observation, labels, seed: int,
                    device, batch_size: int, progress=None):
    """Samples [n, C, H, W] in [-1, 1] for ``task`` from the loaded module; returns (x, nfe)."""
    module = loaded.module.to(device)
    settings = dict(settings)
    name, steps = settings.pop("name"), settings.pop("steps")
    gen = torch.Generator(device=device).manual_seed(seed)
    xs, nfe = [], 0
    for lo in range(0, observation.shape[0], batch_size):
        obs = observation[lo:lo + batch_size].to(device)
        y = labels[lo:lo + batch_size].to(device) if labels is not None else None
        model = module.guided_prediction_fn(y)
        res = controlled_sample(model, module.model.path, constraint_for(task, loaded, obs),
                                tuple(obs.shape), sampler=name, steps=steps, generator=gen,
                                device=device, jump_length=int(task.get("jump_length", 1)),
                                n_resample=int(task.get("n_resample", 1)), callback=progress,
                                **settings)
        if progress is not None:
            progress.batch_done()
        xs.append(res.x.cpu())
        nfe = res.nfe
    return torch.cat(xs), nfe
