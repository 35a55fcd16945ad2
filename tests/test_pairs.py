"""data=mnist5k_pairs: captioned two-digit canvases, a held-out set of unseen pairs, and the
caption accuracy of the shipped digit classifier on them."""

import re

import pytest
import torch

from scorelab.data.pairs import NUMBER_WORDS, SEEN, TEMPLATES, UNSEEN, MNIST5kPairsDataModule
from scorelab.metrics.caption import caption_accuracy
from scorelab.metrics.digit_classifier import load_digit_classifier
from scorelab.models.text import START, UNKNOWN


def named(caption: str) -> tuple[int, int]:
    """(left, right) read back from a caption through the template it matches."""
    value = {w: i for i, w in enumerate(NUMBER_WORDS)} | {str(i): i for i in range(10)}
    for t in TEMPLATES:
        m = re.fullmatch(t.replace("{l}", r"(?P<l>\w+)").replace("{r}", r"(?P<r>\w+)"),
                         caption)
        if m:
            return value[m["l"]], value[m["r"]]
    raise AssertionError(f"no template makes {caption!r}")


def test_pairs_are_captioned_canvases_of_seen_pairs_and_deterministic():
    dm = MNIST5kPairsDataModule(size=400, context=16, batch_size=8)
    ds = dm.load()
    x, ids = ds.tensors
    assert x.shape == (400, 1, 28, 56) and ids.shape == (400, 16)
    assert x.min() >= -1 and x.max() <= 1 and (ids[:, 0] == START).all()
    assert not (ids == UNKNOWN).any()
    pairs = {tuple(d) for d in dm.digits.tolist()}
    assert pairs <= set(SEEN) and not pairs & UNSEEN and len(pairs) > 60
    for caption, digits in zip(dm.captions, dm.digits.tolist()):
        assert named(caption) == tuple(digits), caption
    assert len({c.split()[0] for c in dm.captions}) > 4             # varied templates
    again = MNIST5kPairsDataModule(size=400, context=16, batch_size=8)
    assert torch.equal(again.load().tensors[0], x) and again.captions == dm.captions
    _, captions, digits = dm.held_out(50)
    assert {tuple(d) for d in digits.tolist()} <= UNSEEN
    assert all(named(c) == tuple(d) for c, d in zip(captions, digits.tolist()))


def test_caption_accuracy_of_the_classifier_on_real_canvases():
    dm = MNIST5kPairsDataModule(size=300, batch_size=8)
    x, _ = dm.load().tensors
    acc = caption_accuracy(load_digit_classifier(), (x + 1) / 2, dm.digits)
    assert acc["left_accuracy"] > 0.95 and acc["right_accuracy"] > 0.95
    assert acc["caption_accuracy"] > 0.9
    swapped = caption_accuracy(load_digit_classifier(), (x + 1) / 2, dm.digits.flip(1))
    assert swapped["caption_accuracy"] < 0.2          # the places matter
    with pytest.raises(ValueError, match="canvases are 28x56"):
        caption_accuracy(load_digit_classifier(), x[..., :28], dm.digits)


def test_short_context_is_refused():
    dm = MNIST5kPairsDataModule(size=20, context=4, batch_size=4)
    with pytest.raises(ValueError, match="context, 4 tokens .* is shorter than"):
        dm.load()
