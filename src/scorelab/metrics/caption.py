"""Text alignment of two-digit canvases (``data=mnist5k_pairs``), through the metric registry.

The shipped digit classifier reads each 28x28 half of a 28x56 canvas (the ``digit_halves``
extractor: features [left | right], 2 x 128, logits [left | right], 2 x 10):

* ``caption_accuracy``: the share of samples whose two digits are both the ones their
  caption names (with the left and right accuracies alone, and ``order_free_accuracy``: the
  two named digits in either order -- its gap to caption accuracy is the samples that drew
  the right digits on the wrong sides, a failure to bind words to places);
* ``half_fid``: FID of the halves, each an image of one digit, against MNIST-5k's own
  reference statistics on the same classifier -- the number a 28x28 MNIST-5k model reports,
  so a text model compares with a class-conditional one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scorelab.metrics.digit_classifier import SIZE, halves
from scorelab.metrics.evaluation import reference_statistics
from scorelab.metrics.features import DigitFeatures
from scorelab.metrics.fid import feature_statistics, frechet_distance
from scorelab.metrics.registry import SampleMetric, register_metric

NUM_DIGITS = 10


def _not_canvases(data) -> str | None:
    return None if tuple(getattr(data, "shape", ())) == (1, SIZE, 2 * SIZE) else \
        "needs 28x56 two-digit canvases (data=mnist5k_pairs)"


def pair_accuracy(logits: Tensor, digits: Tensor) -> dict[str, float]:
    """logits [B, 20] (left's 10, right's 10), digits [B, 2] named by the captions ->
    {"caption_accuracy": both right, "left_accuracy", "right_accuracy",
    "order_free_accuracy": both named digits, in either order}."""
    left, right = logits[:, :NUM_DIGITS].argmax(1).cpu(), logits[:, NUM_DIGITS:].argmax(1).cpu()
    named_l, named_r = digits[:, 0].cpu(), digits[:, 1].cpu()
    hit_l, hit_r = left == named_l, right == named_r
    swapped = (left == named_r) & (right == named_l)
    return {"caption_accuracy": float((hit_l & hit_r).double().mean()),
            "left_accuracy": float(hit_l.double().mean()),
            "right_accuracy": float(hit_r.double().mean()),
            "order_free_accuracy": float(((hit_l & hit_r) | swapped).double().mean())}


@torch.no_grad()
def caption_accuracy(classifier, canvases: Tensor, digits: Tensor) -> dict[str, float]:
    """``pair_accuracy`` of canvases in [0, 1] [B, 1, 28, 56] read by ``classifier``."""
    left, right = halves(canvases)
    return pair_accuracy(torch.cat([classifier(left), classifier(right)], 1), digits)


@register_metric("caption_accuracy")
class CaptionAccuracy(SampleMetric):
    """Both digits of a canvas as its caption names them (``pair_accuracy``); needs the
    ``digit_halves`` features and prompts whose digits are known (the held-out or training
    captions of ``data=mnist5k_pairs``, or a prompts file in their words)."""

    needs_logits = True
    needs_digits = True

    def __init__(self, features="digit_halves", cache_dir=None):
        super().__init__(features, cache_dir)

    def skip_reason(self, data):
        return _not_canvases(data)

    def reference(self, data, extractor, cache):
        return None, None

    def compute(self, fake, real):
        if fake["logits"].shape[1] != 2 * NUM_DIGITS:
            raise ValueError("metrics.caption_accuracy needs features=digit_halves")
        return pair_accuracy(fake["logits"], fake["digits"])


@register_metric("half_fid")
class HalfFID(SampleMetric):
    """FID of the canvases' halves (2 per sample) against MNIST-5k's digit statistics, the
    reference file a 28x28 MNIST-5k run uses (``reference``: another .npz of mu, sigma)."""

    def __init__(self, features="digit_halves", reference=None, cache_dir=None):
        super().__init__(features, cache_dir)
        self.reference_file = reference

    def skip_reason(self, data):
        return _not_canvases(data) or (None if hasattr(data, "single_digits") else
                                       "needs a dataset of two-digit canvases with its digits")

    def reference(self, data, extractor, cache):
        digits = DigitFeatures()
        return reference_statistics(data.single_digits(), "mnist5k", digits,
                                    self.reference_file, self.cache_dir,
                                    getattr(data, "root", None))

    def compute(self, fake, real):
        feats = fake["features"]
        if feats.shape[1] != 2 * DigitFeatures.dim:
            raise ValueError("metrics.half_fid needs features=digit_halves")
        one = feats.shape[1] // 2
        return {"half_fid": frechet_distance(
            feature_statistics(torch.cat([feats[:, :one], feats[:, one:]])), real)}


__all__ = ["CaptionAccuracy", "HalfFID", "caption_accuracy", "halves", "pair_accuracy"]
