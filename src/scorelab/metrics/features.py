"""Feature extractors for FID / IS: the shipped digit classifier or torch-fidelity's InceptionV3.

Both take samples in the model's [-1, 1] space, quantise them to uint8 like a saved PNG
(the field's convention: FID is computed on 8-bit images), and return (features, logits):

* ``digits``: 128-d penultimate activations / 10 digit logits, images resized to 28x28.
* ``inception``: torch-fidelity's ``inception-v3-compat`` (the TF-FID network), 2048-d
  pool3 features / 1008 logits, grey images repeated to RGB, resized to 299x299 inside.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import torch
from torch import Tensor

from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from scorelab.util.errors import ScorelabError
from scorelab.metrics.digit_classifier import WEIGHTS, load_digit_classifier

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class FeatureWeightsMissing(ScorelabError, FileNotFoundError):
    """The weights of a feature extractor are neither on disk nor downloadable."""


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] -> uint8 {0..255} by round((x + 1) / 2 * 255), clamped."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class DigitFeatures:
    name, dim, num_logits = "digits", 128, 10

    def __init__(self, device="cpu"):
        self.net = load_digit_classifier().to(device)
        # Cached reference statistics are tied to these exact weights.
        self.tag = "digits-" + hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()[:8]

    @torch.no_grad()
    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = self.net.features_and_logits(to_uint8(x).to(self.net.fc.weight.device))
        return feats.double().cpu(), logits.double().cpu()


def inception_weights(path: str | None = None) -> str:
    """A local file with the FID Inception weights: ``path``, torch hub's cache, or a
    download into that cache; otherwise FeatureWeightsMissing naming where to put it."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if path:
        if not Path(path).is_file():
            raise FeatureWeightsMissing(f"metrics.fid.inception_weights={path}: no such file")
        return str(path)
    if cached.is_file():
        return str(cached)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(cached), progress=False)
    except Exception as e:  # noqa: BLE001 - any network failure gets the same advice
        raise FeatureWeightsMissing(
            f"FID Inception weights are not cached and could not be downloaded "
            f"({type(e).__name__}: {e}). Put {INCEPTION_FILE} (from {URL_INCEPTION_V3}) at "
            f"{cached}, or pass metrics.fid.inception_weights=PATH; digit data can use "
            f"metrics.fid.features=digits offline") from None
    finally:
        socket.setdefaulttimeout(old)
    return str(cached)


class InceptionFeatures:
    name, dim, num_logits = "inception", 2048, 1008
    tag = "inception-6726825d"

    def __init__(self, device="cpu", weights: str | None = None):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"],
            feature_extractor_weights_path=inception_weights(weights)).to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        img = to_uint8(x)
        if img.shape[1] == 1:
            img = img.repeat(1, 3, 1, 1)
        feats, logits = self.net(img.to(self.device))
        return feats.double().cpu(), logits.double().cpu()


def get_extractor(name: str, device="cpu", inception_weights_path: str | None = None):
    if name == "digits":
        return DigitFeatures(device)
    if name == "inception":
        return InceptionFeatures(device, inception_weights_path)
    raise ValueError(f"metrics.fid.features must be digits or inception, got {name!r}")
