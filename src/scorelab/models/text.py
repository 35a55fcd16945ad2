"""Captions as token sequences: a word tokenizer built from the training captions and a small
transformer text encoder, trained jointly with the denoiser (as Imagen's and LDM's text
towers are, there frozen).

Token ids: 0 padding, 1 the start token, 2 unknown words, then the vocabulary. Every encoded
caption begins with the start token, so the empty caption -- the null condition of
classifier-free guidance -- is one real token and attention always has a key; the
key padding mask (``ids != PAD``) hides the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import Tensor, nn

PAD, START, UNKNOWN = 0, 1, 2
SPECIAL = ("<pad>", "<start>", "<unk>")


def words(caption: str) -> list[str]:
    """Lower-case words and numbers of a caption (punctuation dropped)."""
    return re.findall(r"[a-z0-9]+", caption.lower())


class WordTokenizer:
    """Caption -> ids [context] (start token, word ids, padding), from a fixed vocabulary.

    Args:
        vocab: the words, in id order (ids from 3 on).
        context: the sequence length, start token included; longer captions are cut to it.
    """

    def __init__(self, vocab: Iterable[str], context: int = 16):
        self.vocab = list(vocab)
        if len(set(self.vocab)) != len(self.vocab) or set(self.vocab) & set(SPECIAL):
            raise ValueError("tokenizer vocabulary: words must be unique and not special tokens")
        if context < 2:
            raise ValueError(f"tokenizer context must be at least 2, got {context}")
        self.context = int(context)
        self.ids = {w: i + len(SPECIAL) for i, w in enumerate(self.vocab)}

    @classmethod
    def from_captions(cls, captions: Iterable[str], context: int = 16) -> "WordTokenizer":
        """The vocabulary of ``captions`` (sorted, so the same captions give the same ids)."""
        return cls(sorted({w for c in captions for w in words(c)}), context)

    def __len__(self) -> int:
        return len(SPECIAL) + len(self.vocab)

    def encode(self, captions: Iterable[str]) -> tuple[Tensor, int, int]:
        """(ids [B, context] long, words not in the vocabulary, captions cut to the context)."""
        rows, unknown, cut = [], 0, 0
        for caption in captions:
            ids = [self.ids.get(w, UNKNOWN) for w in words(caption)]
            unknown += ids.count(UNKNOWN)
            if len(ids) > self.context - 1:
                ids, cut = ids[:self.context - 1], cut + 1
            ids = [START] + ids
            rows.append(ids + [PAD] * (self.context - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(-1, self.context), unknown, cut

    def decode(self, ids: Tensor) -> str:
        names = list(SPECIAL) + self.vocab
        return " ".join(names[i] for i in ids.tolist() if i not in (PAD, START))

    def state_dict(self) -> dict:
        return {"vocab": list(self.vocab), "context": self.context}

    @classmethod
    def from_state_dict(cls, state: dict) -> "WordTokenizer":
        return cls(state["vocab"], state["context"])


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """The mean of the real tokens [B, L, D] -> [B, D] (the pooled condition)."""
    w = mask.to(tokens.dtype)[..., None]
    return (tokens * w).sum(1) / w.sum(1).clamp(min=1)



def null_captions(n: int, context: int, device=None) -> Tensor:
    """n empty captions (the start token alone): the null text condition."""
    ids = torch.full((n, context), PAD, dtype=torch.long, device=device)
    ids[:, 0] = START
    return ids


class TextEncoder(nn.Module):
    """ids [B, L] -> (tokens [B, L, dim], mask [B, L], pooled [B, dim]).

    Token and learned position embeddings, ``depth`` pre-norm transformer layers with the
    key padding mask, a final LayerNorm; pooled = the mean of the real tokens.
    """

    def __init__(self, vocab_size: int, context: int = 16, dim: int = 64, depth: int = 2,
                 heads: int = 4):
        super().__init__()
        self.context, self.dim = context, dim
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.randn(context, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        # no nested-tensor fast path: batch and one-by-one encodings stay equal to rounding
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor, mask: Tensor | None = None):
        if ids.shape[1] != self.context:
            raise ValueError(f"text encoder: captions of {ids.shape[1]} tokens, its context is "
                             f"{self.context}")
        mask = ids != PAD if mask is None else mask
        h = self.token(ids) + self.position
        h = self.norm(self.layers(h, src_key_padding_mask=~mask))
        return h, mask, masked_mean(h, mask)


__all__ = ["WordTokenizer", "TextEncoder", "null_captions", "masked_mean", "words", "PAD",
           "START", "UNKNOWN"]
