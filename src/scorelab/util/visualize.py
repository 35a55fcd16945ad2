"""Pictures of samples: an image grid, or a scatter plot for vector data."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def save_samples(x: torch.Tensor, path, is_image: bool = True) -> Path:
    """Save samples in data space ([0, 1] images, or vectors) as a PNG at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
