"""A frozen pretrained CLIP text model and its tokenizer (``text_encoder=clip``), as Stable
Diffusion 1.x conditions on captions: the BPE tokenizer pads every caption to ``context``
tokens, the causal text transformer's last hidden states are the cross-attention tokens and
its end-of-text state (``pooler_output``) the pooled vector. ``pip install 'scorelab[text]'``
(transformers); weights and tokenizer from a local directory (``save_pretrained``) or a hub id.

Both are stored whole in a scorelab checkpoint -- the tokenizer's files in its metadata, the
frozen weights in its state dict -- so sampling needs neither the directory nor the network.

Nulls: scorelab spells the empty caption in any id space as ``null_captions`` (the start id
then padding, ``scorelab.models.text``), so dropout, classifier-free guidance and y=None
work unchanged; the encoder reads those rows as CLIP's own encoding of "" (start, end of
text), the unconditional input SD uses.
"""

from __future__ import annotations

import json
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from scorelab.models.text import PAD, START
from scorelab.util.errors import ScorelabError

# the tokenizer's files kept in a checkpoint (whichever of them save_pretrained writes)
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


class TextEncoderUnavailable(ScorelabError):
    """transformers is not installed, or the pretrained text model cannot be found."""


def _transformers():
    try:
        import transformers
    except ImportError:
        raise TextEncoderUnavailable("text_encoder=clip needs the transformers package: pip "
                                     "install 'scorelab[text]'") from None
    return transformers


def _load(kind: str, pretrained: str, local_files_only: bool, **kwargs):
    """``CLIPTokenizer`` or ``CLIPTextModel`` (``kind``) from a directory or a hub id."""
    cls = getattr(_transformers(), kind)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}      # (subfolder=None: none)
    local = Path(str(pretrained)).expanduser()
    try:
        return cls.from_pretrained(str(local) if local.is_dir() else str(pretrained),
                                   local_files_only=local_files_only, **kwargs)
    except (OSError, ValueError) as e:
        where = "in the local directory" if local.is_dir() else \
            "not a local directory, and not in the Hugging Face cache" + \
            (" (text_encoder.local_files_only=true)" if local_files_only else " nor on the hub")
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TextEncoderUnavailable(f"text_encoder.pretrained={pretrained}: no {kind} "
                                     f"{where}; {first}") from None


class ClipTokenizer:
    """Captions -> CLIP token ids [B, context] (start, BPE tokens, end of text, padding).

    Same interface as ``WordTokenizer``: ``encode``, ``context``, ``state_dict`` (the
    tokenizer's files, the text model's config and the empty caption's ids)."""

    def __init__(self, tokenizer, context: int, model_config: dict, source: str = ""):
        self.tok, self.context, self.model_config, self.source = tokenizer, int(context), \
            dict(model_config), source
        positions = int(model_config.get("max_position_embeddings", context))
        if not 2 <= self.context <= positions:
            raise ValueError(f"text_encoder.context={context}: the CLIP text model takes 2 to "
                             f"{positions} tokens")

    @classmethod
    def from_pretrained(cls, pretrained: str, context: int | None = None,
                        local_files_only: bool = True, tokenizer_subfolder: str | None = None,
                        model_subfolder: str | None = None) -> "ClipTokenizer":
        """From a directory or hub id holding both (``save_pretrained``), or a pipeline's
        folders (Stable Diffusion: ``tokenizer`` and ``text_encoder``)."""
        tok = _load("CLIPTokenizer", pretrained, local_files_only,
                    subfolder=tokenizer_subfolder)
        config = _load("CLIPTextConfig", pretrained, local_files_only,
                       subfolder=model_subfolder)
        config = json.loads(config.to_json_string())
        return cls(tok, context or config["max_position_embeddings"], config, str(pretrained))

    def encode(self, captions) -> tuple[Tensor, int, int]:
        """(ids [B, context], 0 -- BPE has no unknown words --, captions cut to the context)."""
        captions = list(captions)
        if not captions:
            return torch.zeros(0, self.context, dtype=torch.long), 0, 0
        lengths = [len(ids) for ids in self.tok(captions)["input_ids"]]
        ids = self.tok(captions, padding="max_length", max_length=self.context,
                       truncation=True, return_tensors="pt")["input_ids"]
        return ids.long(), 0, sum(n > self.context for n in lengths)

    def empty(self) -> list[int]:
        """The ids of the empty caption: the unconditional input."""
        return self.encode([""])[0][0].tolist()

    def state_dict(self) -> dict:
        with tempfile.TemporaryDirectory() as d:
            self.tok.save_pretrained(d)
            files = {name: (Path(d) / name).read_text() for name in TOKENIZER_FILES
                     if (Path(d) / name).is_file()}
        return {"kind": "clip", "context": self.context, "files": files,
                "model_config": self.model_config, "empty": self.empty(),
                "source": self.source}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ClipTokenizer":
        with tempfile.TemporaryDirectory() as d:
            for name, text in state["files"].items():
                (Path(d) / name).write_text(text)
            tok = _load("CLIPTokenizer", d, True)
        return cls(tok, state["context"], state["model_config"], state.get("source", ""))


class ClipTextEncoder(nn.Module):
    """ids [B, context] -> (tokens [B, L, D], mask [B, L], pooled [B, D]), frozen.

    The mask keeps the tokens up to the first end of text (CLIP pads with it); ``null``
    rows (``null_captions``) are read as the empty caption ``empty``.

    Args:
        model_config: the ``CLIPTextConfig`` as a dict (fresh weights: a checkpoint's state
            dict, or ``pretrained``, provides them).
        context: tokens per caption. empty: the empty caption's ids.
        pretrained: load the weights from this directory or hub id now.
        local_files_only: never reach the hub for ``pretrained``.
        subfolder: the text model's folder in ``pretrained`` (a pipeline's
            ``text_encoder``).
        cache: keep the encodings of up to this many distinct captions (least recently used
            out first; 0: none). The model is frozen, so a caption's encoding never changes:
            after the first epoch a dataset's captions cost no text-encoder pass. Only the
            real tokens are kept (the padding is masked out of cross-attention anyway).
    """

    def __init__(self, model_config: dict, context: int, empty: list[int],
                 pretrained: str | None = None, local_files_only: bool = True,
                 cache: int = 0, subfolder: str | None = None):
        super().__init__()
        transformers = _transformers()
        if pretrained:
            self.model = _load("CLIPTextModel", pretrained, local_files_only,
                               subfolder=subfolder)
        else:
            self.model = transformers.CLIPTextModel(
                transformers.CLIPTextConfig.from_dict(model_config))
        self.model.requires_grad_(False).eval()
        self.context, self.dim = int(context), int(self.model.config.hidden_size)
        self.end = int(self.model.config.eos_token_id)
        if len(empty) != self.context:
            raise ValueError(f"the empty caption has {len(empty)} ids, the context is "
                             f"{self.context}")
        self.register_buffer("empty", torch.tensor(empty, dtype=torch.long), persistent=False)
        if int(cache) < 0:
            raise ValueError(f"text encoder cache must be >= 0 captions, got {cache}")
        self.cache_size, self._cache = int(cache), OrderedDict()

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()           # frozen: no dropout, whatever the denoiser does
        return self

    def forward(self, ids: Tensor, mask: Tensor | None = None):
        if ids.shape[1] != self.context:
            raise ValueError(f"text encoder: captions of {ids.shape[1]} tokens, its context is "
                             f"{self.context}")
        null = (ids[:, 0] == START) & (ids[:, 1:] == PAD).all(1)
        ids = torch.where(null[:, None], self.empty.to(ids.device), ids)
        end = (ids == self.end).long()
        mask = (end.cumsum(1) - end) == 0           # up to and with the first end of text
        if self.cache_size:
            return self._cached(ids, mask)
        with torch.no_grad():
            out = self.model(input_ids=ids)
        return out.last_hidden_state, mask, out.pooler_output

    def _cached(self, ids: Tensor, mask: Tensor):
        # the model runs on the batch's captions not yet kept, each distinct one once
        keys = [tuple(row) for row in ids.tolist()]
        new = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if new:
            rows = [keys.index(k) for k in new]
            with torch.no_grad():
                out = self.model(input_ids=ids[rows])
            for j, (k, i) in enumerate(zip(new, rows)):
                real = int(mask[i].sum())
                self._cache[k] = (out.last_hidden_state[j, :real].clone(),
                                  out.pooler_output[j].clone())
        entries = []
        for k in keys:
            self._cache.move_to_end(k)
            entries.append(self._cache[k])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        pooled = torch.stack([pool for _, pool in entries]).to(ids.device)
        tokens = pooled.new_zeros((len(keys), self.context, self.dim))
        for i, (hidden, _) in enumerate(entries):
            tokens[i, :len(hidden)] = hidden
        return tokens, mask, pooled


__all__ = ["ClipTextEncoder", "ClipTokenizer", "TextEncoderUnavailable"]
