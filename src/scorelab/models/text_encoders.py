"""The text encoders and tokenizers by kind: the word tokenizer and transformer trained with
the denoiser (``scorelab.models.text``) or a frozen pretrained CLIP
(``scorelab.models.clip_text``)."""

from __future__ import annotations

from torch import nn

from scorelab.models.text import TextEncoder, WordTokenizer


def build_text_encoder(options: dict) -> nn.Module:
    """A backbone's text encoder from its ``text`` options: ``kind`` scorelab (the default:
    ``TextEncoder``, trained with the denoiser) or clip (a frozen ``ClipTextEncoder``)."""
    options = dict(options)
    kind = options.pop("kind", "scorelab")
    if kind == "clip":
        from scorelab.models.clip_text import ClipTextEncoder
        return ClipTextEncoder(**options)
    if kind != "scorelab":
        raise ValueError(f"text encoder: unknown kind {kind!r} (scorelab, clip)")
    return TextEncoder(**options)


def tokenizer_from_state(state: dict):
    """The tokenizer a checkpoint stores (``state_dict()`` of a ``WordTokenizer`` or, with
    kind clip, a ``ClipTokenizer``)."""
    if state.get("kind") == "clip":
        from scorelab.models.clip_text import ClipTokenizer
        return ClipTokenizer.from_state_dict(state)
    return WordTokenizer.from_state_dict(state)


__all__ = ["build_text_encoder", "tokenizer_from_state"]
