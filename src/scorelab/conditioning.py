"""Class conditioning: the null label and label dropout, in one place.

A conditional backbone embeds labels 0..K-1 and one extra *null* label (row K of its
embedding table) meaning "no class": the unconditional model of classifier-free guidance
(Ho & Salimans 2022), trained by replacing each sample's label with the null label with
probability ``p_uncond`` (label dropout). Outside the embedding table the null label is
spelled ``NULL_LABEL`` = -1 (independent of K), and ``y=None`` means "null for the whole
batch"; ``nets.layers.ClassEmbedding`` maps both to row K.
"""

from __future__ import annotations

import torch
from torch import Tensor

NULL_LABEL = -1


def null_labels(n: int, device=None) -> Tensor:
    """A batch of n null labels."""
    return torch.full((n,), NULL_LABEL, dtype=torch.long, device=device)


def drop_labels(y: Tensor, p_uncond: float, generator: torch.Generator | None = None) -> Tensor:
    """y with each label replaced by ``NULL_LABEL`` independently with probability
    ``p_uncond`` (classifier-free guidance training)."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, NULL_LABEL), y)


def check_p_uncond(p_uncond: float) -> float:
    if not (isinstance(p_uncond, (int, float)) and not isinstance(p_uncond, bool)
            and 0 <= p_uncond < 1):
        raise ValueError(f"p_uncond: must be a probability in [0, 1), got {p_uncond!r}")
    return float(p_uncond)
