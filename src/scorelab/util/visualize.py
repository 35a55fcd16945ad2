"""Pictures of samples: an image grid, or a scatter plot for vector data."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def save_samples(x: torch.Tensor, path, is_image: bool = True,
                 captions: list[str] | None = None) -> Path:
    """Save samples in data space ([0, 1] images, or vectors) as a PNG at ``path``; images
    drawn for prompts (``captions``, one per sample) are labelled with them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_image and captions is not None:
        return labelled_grid(x, captions, path)
    if is_image:
        from torchvision.utils import save_image

        save_image(x.float(), path, nrow=int(math.ceil(math.sqrt(x.shape[0]))), padding=2)
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = x.flatten(1).float().numpy()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(pts[:, 0], pts[:, 1] if pts.shape[1] > 1 else 0 * pts[:, 0], s=2, alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(f"{pts.shape[0]} samples (first two coordinates)")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def labelled_grid(x: torch.Tensor, captions: list[str], path, scale: int = 2,
                  max_rows: int = 16) -> Path:
    """Images [n, C, H, W] in [0, 1], each shown ``scale`` times larger with its caption to
    its right; columns of ``max_rows`` tiles."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    n, (h, w) = x.shape[0], x.shape[-2:]
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
    widths = [ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(c, font=font)
              for c in captions[:n]]
    pad = 4
    tile_w = scale * w + 3 * pad + int(max(widths, default=0))
    tile_h = scale * h + pad
    cols = -(-n // max_rows)
    rows = -(-n // cols)
    canvas = Image.new("RGB", (cols * tile_w, rows * tile_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        left, top = (i // rows) * tile_w + pad, (i % rows) * tile_h + pad
        image = Image.fromarray(pixels[i].permute(1, 2, 0).numpy())
        canvas.paste(image.resize((scale * w, scale * h), Image.NEAREST), (left, top))
        draw.text((left + scale * w + pad, top + scale * h // 2), captions[i], fill="black",
                  font=font, anchor="lm")
    canvas.save(path)
    return Path(path)
