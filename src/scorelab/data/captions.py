"""Captions and prompts: a folder's captions (sidecar files or captions.jsonl), prompts read
from a file or drawn from a captioned dataset's splits, and their token ids -- the one place
the datasets, sample.py, evaluate.py and the metric callback get them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from scorelab.models.text_encoders import tokenizer_from_state

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
    or CLIP's BPE); words it does not know become the unknown token and prompts longer than
    its context are cut, each counted in a warning."""
    tok = tokenizer_from_state(tokenizer)
    ids, unknown, cut = tok.encode(prompts)
    if unknown:
        log.warning("prompts: %d word(s) not in the model's vocabulary read as the unknown "
                    "token", unknown)
    if cut:
        log.warning("prompts: %d prompt(s) longer than the model's %d tokens cut to them", cut,
                    tok.context)
    return ids


def dataset_ids(tokenizer, captions: list[str], where: str) -> torch.Tensor:
    """A captioned dataset's token ids [n, context] with its (or the model's) tokenizer;
    a caption longer than the context is an error naming it, never silently cut."""
    ids, _, cut = tokenizer.encode(captions)
    if cut:
        raise ValueError(f"{where}: the tokenizer's context, {tokenizer.context} tokens "
                         f"(data.context, or text_encoder.context for clip), is shorter than "
                         f"{cut} captions")
    return ids


def image_captions(root, extensions) -> tuple[list[Path], list[str]]:
    """Every image under ``root`` (recursively, sorted) and its caption, from
    ``root/captions.jsonl`` (one {"file": path relative to root, "text": caption} per
    line) when it exists, else from the ``<image>.txt`` beside each image. An image without
    a caption, or a caption without its image, is an error naming it."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions)
    if not files:
        raise FileNotFoundError(f"data.captions: no images under {root}")
    table = root / "captions.jsonl"
    if table.is_file():
        texts = {}
        for number, line in enumerate(table.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                texts[(root / row["file"]).resolve()] = str(row["text"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{table}:{number}: not a JSON object with \"file\" and "
                                 f"\"text\"") from None
        missing = [f for f in files if f.resolve() not in texts]
        if missing:
            raise ValueError(f"{table}: no caption for {len(missing)} image(s), e.g. "
                             f"{missing[0].relative_to(root)}")
        extra = set(texts) - {f.resolve() for f in files}
        if extra:
            raise ValueError(f"{table}: {len(extra)} caption(s) name no image under {root}, "
                             f"e.g. {sorted(extra)[0]}")
        return files, [texts[f.resolve()] for f in files]
    captions = []
    for f in files:
        side = f.with_suffix(".txt")
        if not side.is_file():
            raise FileNotFoundError(f"data.captions: {f.relative_to(root)} has no caption "
                                    f"({side.name} beside it, or a captions.jsonl in {root})")
        captions.append(side.read_text().strip())
    return files, captions


__all__ = ["dataset_ids", "encode_prompts", "evaluation_prompts", "image_captions",
           "read_prompts"]
