"""Conditioning: the null condition and its dropout, in one place.

A conditional backbone embeds labels 0..K-1 and one extra *null* label (row K of its
embedding table) meaning "no class": the unconditional model of classifier-free guidance
(Ho & Salimans 2022), trained by replacing each sample's label with the null label with
probability ``p_uncond`` (label dropout). Outside the embedding table the null label is
spelled ``NULL_LABEL`` = -1 (independent of K), and ``y=None`` means "null for the whole
batch"; ``nets.layers.ClassEmbedding`` maps both to row K.

A caption is a row of token ids [L] (``scorelab.models.text``); its null is the empty caption
(the start token alone), which a text backbone also reads for ``y=None``. ``null_like`` and
``drop_labels`` take either form: labels [B] or captions [B, L].
"""

from __future__ import annotations

import torch
from torch import Tensor

from scorelab.models.text import null_captions
from scorelab.util.checks import check_value, number

NULL_LABEL = -1


def null_labels(n: int, device=None) -> Tensor:
    """A batch of n null labels."""
    return torch.full((n,), NULL_LABEL, dtype=torch.long, device=device)


def null_like(y: Tensor) -> Tensor:
    """The null condition for each row of y: ``NULL_LABEL`` for labels [B], the empty
    caption for captions [B, L]."""
    if y.dim() == 2:
        return null_captions(y.shape[0], y.shape[1], y.device)
    return torch.full_like(y, NULL_LABEL)


def drop_labels(y: Tensor, p_uncond: float, generator: torch.Generator | None = None) -> Tensor:
    """y with each label (or caption) replaced by its null independently with probability
    ``p_uncond`` (classifier-free guidance training)."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape[:1], generator=generator, device=y.device) < p_uncond
    return torch.where(drop.reshape((-1,) + (1,) * (y.dim() - 1)), null_like(y), y)


def check_p_uncond(p_uncond: float) -> float:
    """``p_uncond`` as a probability in [0, 1) (ValueError naming the key)."""
    check_value("p_uncond", p_uncond, number(0, 1, hi_open=True))
    return float(p_uncond)
