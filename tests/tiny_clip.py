"""A tiny random CLIP text model and BPE tokenizer in a local directory, written by the
tests (never the hub): every character of the pairs' captions and each of their words as
one merged token."""

import json
from pathlib import Path

from scorelab.data.pairs import NUMBER_WORDS, TEMPLATES
from scorelab.models.text import words


def tiny_clip(directory, context: int = 20, hidden: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_words = sorted({w for t in TEMPLATES for w in words(t.format(l="", r=""))} |
                         set(NUMBER_WORDS) | set("0123456789"))
    vocab, merges = {}, []
    for c in sorted(set("".join(vocab_words)) | set(",")):
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    for w in vocab_words:                  # merge each word left to right into one token
        cur = w[0]
        for i, ch in enumerate(w[1:], 1):
            piece = ch + "</w>" if i == len(w) - 1 else ch
            if (cur, piece) not in merges:
                merges.append((cur, piece))
            cur += piece
            vocab.setdefault(cur, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(p) for p in merges) + "\n")
    tok = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    tok.save_pretrained(directory)
    config = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden,
                            intermediate_size=2 * hidden, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=context,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    CLIPTextModel(config).save_pretrained(directory)
    return directory
