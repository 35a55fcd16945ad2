"""Caption accuracy of two-digit canvases (``data=mnist5k_pairs``): the shipped digit
classifier on each 28x28 half; a canvas is right when both of its digits are the ones its
caption names. On the data itself it measures the classifier (``tests/test_pairs.py``)."""

from __future__ import annotations

import torch
from torch import Tensor

from scorelab.metrics.digit_classifier import SIZE


def halves(canvases: Tensor) -> tuple[Tensor, Tensor]:
    """[B, C, 28, 56] -> the left and right [B, C, 28, 28] halves."""
    if canvases.shape[-1] != 2 * SIZE or canvases.shape[-2] != SIZE:
        raise ValueError(f"caption accuracy needs 28x56 canvases, got "
                         f"{tuple(canvases.shape[-2:])}")
    return canvases[..., :SIZE], canvases[..., SIZE:]


@torch.no_grad()
def caption_accuracy(classifier, canvases: Tensor, digits: Tensor) -> dict[str, float]:
    """canvases in [0, 1] [B, 1, 28, 56], digits [B, 2] (left, right) named by the captions
    -> {"caption_accuracy": both right, "left_accuracy", "right_accuracy"}."""
    left, right = halves(canvases)
    hit_l = classifier(left).argmax(1).cpu() == digits[:, 0].cpu()
    hit_r = classifier(right).argmax(1).cpu() == digits[:, 1].cpu()
    return {"caption_accuracy": float((hit_l & hit_r).float().mean()),
            "left_accuracy": float(hit_l.float().mean()),
            "right_accuracy": float(hit_r.float().mean())}
