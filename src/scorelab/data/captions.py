"""Prompts: read from a file, drawn from a captioned dataset's splits, and turned into a
model's token ids -- the one place sample.py, evaluate.py and the metric callback get them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from scorelab.models.text import tokenizer_from_state

log = logging.getLogger(__name__)


def read_prompts(path) -> list[str]:
    """The non-empty lines of a prompts file (FileNotFoundError / ValueError naming it)."""
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"prompts={path}: no such file")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts={path}: the file holds no prompt")
    return prompts


def evaluation_prompts(data, which: str | None, n: int, seed: int = 0) -> list[str]:
    """n prompts for evaluating a caption model on ``data``: ``which`` names a split of
    the dataset's captions (``data.prompts(n, split, seed)``: ``unseen`` -- held-out, the
    default -- or ``seen``) or a file of prompts, taken in turn."""
    which = "unseen" if which is None else str(which)
    splits = tuple(getattr(data, "prompt_splits", ()))
    if which in splits:
        return data.prompts(n, which, seed + 1)
    if not Path(which).is_file():
        raise ValueError(f"prompts={which}: neither a file nor a split of the data's captions "
                         f"({', '.join(splits) or 'it has none'})")
    prompts = read_prompts(which)
    return [prompts[i % len(prompts)] for i in range(n)]


def encode_prompts(tokenizer: dict, prompts: list[str]) -> torch.Tensor:
    """Token ids [len(prompts), context] with a model's tokenizer (its ``state_dict``: words
    or CLIP's BPE);
    words it does not know become the unknown token and prompts longer than its context are
    cut, each counted in a warning."""
    tok = tokenizer_from_state(tokenizer)
    ids, unknown, cut = tok.encode(prompts)
    if unknown:
        log.warning("prompts: %d word(s) not in the model's vocabulary read as the unknown "
                    "token", unknown)
    if cut:
        log.warning("prompts: %d prompt(s) longer than the model's %d tokens cut to them", cut,
                    tok.context)
    return ids


__all__ = ["encode_prompts", "evaluation_prompts", "read_prompts"]
