"""The registry of feature extractors (``FEATURES``): name -> factory(device, shape,
**options) of an extractor ``x -> (features [B, D], logits [B, K])`` in float64 on the CPU,
with attributes ``name``, ``dim``, ``num_logits`` and ``tag`` (names the weights, so cached
reference statistics never meet other weights; None: never cache).

Image extractors take samples in the model's [-1, 1] space and quantise them to uint8 like
a saved PNG (the field's convention: FID is computed on 8-bit images):

* ``digits``: the shipped digit classifier, 128-d penultimate activations / 10 logits.
* ``digit_halves``: ``digits`` on each half of a two-digit 28x56 canvas, side by side.
* ``inception``: torch-fidelity's ``inception-v3-compat`` (the TF-FID network), 2048-d
  pool3 features / 1008 logits, grey images repeated to RGB, resized to 299x299 inside.
* ``network``: any torchvision (or, installed, timm) architecture with weights from a local
  file, its classifier head removed: penultimate features, no logits.
* ``dinov2``: ``network`` preset for FD-DINOv2 as EDM2 reports it (timm's ViT-L/14 DINOv2,
  224x224 bicubic, ImageNet normalisation, 1024-d class-token features).
* ``raw``: the samples themselves, flattened (vector data such as the Gaussian mixture).

A metric names its extractor by a spec: a name, ``auto`` (``feature_spec``) or a dict
``{name: ..., **options}`` (``features=dinov2 features.weights=FILE`` on the command line).
"""

from __future__ import annotations

import hashlib
import math
import socket
from pathlib import Path

import torch
from torch import Tensor

from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from scorelab.util.errors import ScorelabError
from scorelab.metrics.digit_classifier import SIZE, WEIGHTS, halves, load_digit_classifier

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class FeatureWeightsMissing(ScorelabError, FileNotFoundError):
    """The weights of a feature extractor are neither on disk nor downloadable."""


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] -> uint8 {0..255} by round((x + 1) / 2 * 255), clamped."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


FEATURES: dict = {}


def register_features(name: str):
    """Register an extractor factory ``factory(device="cpu", shape=None, **options)``."""
    def wrap(factory):
        if name in FEATURES:
            raise ValueError(f"feature extractor {name!r} registered twice")
        FEATURES[name] = factory
        return factory
    return wrap


@register_features("digits")
class DigitFeatures:
    name, dim, num_logits = "digits", 128, 10

    def __init__(self, device="cpu", shape=None):
        self.net = load_digit_classifier().to(device)
        # Cached reference statistics are tied to these exact weights.
        self.tag = "digits-" + file_digest(WEIGHTS)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = self.net.features_and_logits(to_uint8(x).to(self.net.fc.weight.device))
        return feats.double().cpu(), logits.double().cpu()


@register_features("digit_halves")
class DigitHalfFeatures(DigitFeatures):
    """Two-digit canvases [B, 1, 28, 56] (``data=mnist5k_pairs``): ``digits`` on each
    28x28 half, features [left | right] (256-d), logits [left | right] (20)."""

    name, dim, num_logits = "digit_halves", 2 * DigitFeatures.dim, 2 * DigitFeatures.num_logits

    def __init__(self, device="cpu", shape=None):
        if shape is not None and tuple(shape) != (1, SIZE, 2 * SIZE):
            raise ValueError(f"features=digit_halves reads 1x28x56 canvases, the data is "
                             f"{'x'.join(map(str, shape))}")
        super().__init__(device, shape)
        self.tag = "digit_halves-" + file_digest(WEIGHTS)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        left, right = (super(DigitHalfFeatures, self).__call__(h) for h in halves(x))
        return torch.cat([left[0], right[0]], 1), torch.cat([left[1], right[1]], 1)


def file_digest(path) -> str:
    """The first 8 hex digits of a weights file's SHA-256: the tag of cached statistics."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]


def inception_weights(path: str | None = None) -> str:
    """A local file with the FID Inception weights: ``path``, torch hub's cache, or a
    download into that cache; otherwise FeatureWeightsMissing naming where to put it."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if path:
        if not Path(path).is_file():
            raise FeatureWeightsMissing(f"Inception weights {path}: no such file")
        return str(path)
    if cached.is_file():
        return str(cached)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(cached), progress=True)
    except Exception as e:  # noqa: BLE001 - any network failure gets the same advice
        raise FeatureWeightsMissing(
            f"FID Inception weights are not cached and could not be downloaded "
            f"({type(e).__name__}: {e}). Put {INCEPTION_FILE} (from {URL_INCEPTION_V3}) at "
            f"{cached}, or pass features.weights=PATH (every metric) with features=inception; "
            f"digit data can use features=digits offline") from None
    finally:
        socket.setdefaulttimeout(old)
    return str(cached)


@register_features("inception")
class InceptionFeatures:
    name, dim, num_logits = "inception", 2048, 1008
    tag = "inception-6726825d"

    def __init__(self, device="cpu", shape=None, weights: str | None = None):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"],
            feature_extractor_weights_path=inception_weights(weights)).to(device)
        self.device = device
        if weights:         # another file may hold other weights: its own cached statistics
            self.tag = f"inception-{file_digest(weights)}"

    @torch.no_grad()
    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        img = to_uint8(x)
        if img.shape[1] == 1:
            img = img.repeat(1, 3, 1, 1)
        feats, logits = self.net(img.to(self.device))
        return feats.double().cpu(), logits.double().cpu()


@register_features("raw")
class RawFeatures:
    """The samples themselves, flattened, in float64 (no quantisation): for vector data,
    whose exact law the metrics compare with. Never cached (the data's name does not say
    its settings, and the statistics are cheap)."""
    name, num_logits, tag = "raw", 0, None

    def __init__(self, device="cpu", shape=None):
        if shape is None:
            raise ValueError("features raw: needs the data's shape")
        self.dim = math.prod(shape)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.detach().flatten(1).double().cpu()
        return x, x.new_zeros(x.shape[0], 0)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@register_features("network")
class NetworkFeatures:
    """Penultimate features of a classification network whose weights are a local file.

    Args:
        weights: state_dict file (``torch.save(model.state_dict())``), loaded with
            ``weights_only=True``.
        arch: the architecture's name in ``source``.
        source: "torchvision" (``torchvision.models.get_model``) or "timm".
        head: attribute of the classifier that is replaced by the identity (torchvision:
            "fc" for ResNets, "classifier", "heads"); timm models are built without one.
        size: images are resized (bicubic) to size x size.
        mean, std: per-channel normalisation after scaling to [0, 1].
        name: what the features are called in settings and cache files.
    """
    num_logits = 0

    def __init__(self, device="cpu", shape=None, weights: str | None = None,
                 arch: str = "resnet50", source: str = "torchvision", head: str = "fc",
                 size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD, name: str = "network"):
        if not weights:
            raise FeatureWeightsMissing(f"features={name}: needs a local weights file "
                                        f"(features.weights=FILE, a state_dict of {arch})")
        if not Path(weights).is_file():
            raise FeatureWeightsMissing(f"features.weights={weights}: no such file")
        net = _build_network(source, arch, head)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"features.weights={weights} does not fit {source} {arch}: "
                             f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        self.net = net.eval().requires_grad_(False).to(device)
        self.name, self.size, self.device = name, size, device
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.tag = f"{name}-{arch}-{size}-{file_digest(weights)}"
        with torch.no_grad():
            self.dim = self._features(torch.zeros(1, 3, size, size)).shape[1]

    def _features(self, img: Tensor) -> Tensor:
        return self.net(img.to(self.device)).flatten(1)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        img = to_uint8(x).float() / 255.0
        if img.shape[1] == 1:
            img = img.repeat(1, 3, 1, 1)
        img = torch.nn.functional.interpolate(img, size=(self.size, self.size), mode="bicubic",
                                              align_corners=False)
        feats = self._features((img - self.mean) / self.std).double().cpu()
        return feats, feats.new_zeros(feats.shape[0], 0)


def _build_network(source: str, arch: str, head: str) -> torch.nn.Module:
    if source == "timm":
        try:
            import timm
        except ImportError:
            raise ValueError("features.source=timm: timm is not installed "
                             "(pip install timm)") from None
        return timm.create_model(arch, pretrained=False, num_classes=0)
    if source != "torchvision":
        raise ValueError(f"features.source: unknown source {source!r}; known: torchvision, timm")
    import torchvision
    try:
        net = torchvision.models.get_model(arch, weights=None)
    except ValueError:
        raise ValueError(f"features.arch: unknown torchvision architecture {arch!r}") from None
    if not hasattr(net, head):
        raise ValueError(f"features.head: {arch} has no attribute {head!r}")
    setattr(net, head, torch.nn.Identity())
    return net


@register_features("dinov2")
def dinov2_features(device="cpu", shape=None, weights: str | None = None,
                    arch: str = "vit_large_patch14_dinov2.lvd142m", source: str = "timm",
                    **options) -> NetworkFeatures:
    """FD-DINOv2 (Stein et al. 2023; EDM2, Karras et al. 2024): DINOv2 ViT-L/14 features of
    224x224 images. Weights from a local file only (e.g. timm's ``model.safetensors``
    converted with ``torch.save(state_dict)``)."""
    return NetworkFeatures(device, shape, weights=weights, arch=arch, source=source,
                           size=options.pop("size", 224), name="dinov2", **options)


DIGIT_DATASETS = ("mnist5k", "mnist", "digits")
# the extractor ``auto`` picks for a dataset by name (default: digits / inception / raw)
AUTO_FEATURES = {**{name: "digits" for name in DIGIT_DATASETS}, "mnist5k_pairs": "digit_halves"}


def feature_spec(spec, dataset_name: str, is_image: bool = True) -> dict:
    """A feature spec (name or {name, **options}) as a dict; ``auto``: the shipped digit
    classifier for the digit datasets (on each half of the two-digit canvases), the samples
    themselves for vector data, else Inception."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec or {"name": "auto"})
    if spec.get("name", "auto") == "auto":
        spec["name"] = AUTO_FEATURES.get(dataset_name, "inception" if is_image else "raw")
    if spec["name"] not in FEATURES:
        raise ValueError(f"features: unknown features {spec['name']!r}; known: "
                         f"auto, {', '.join(sorted(FEATURES))}")
    return spec


def build_extractor(spec, device="cpu", shape=None):
    """The extractor of a resolved spec ({name, **options})."""
    options = {k: v for k, v in spec.items() if k != "name" and v is not None}
    try:
        return FEATURES[spec["name"]](device=device, shape=shape, **options)
    except TypeError as e:
        raise ValueError(f"features={spec['name']}: {e}") from None


def get_extractor(name: str, device="cpu", inception_weights_path: str | None = None):
    """The extractor ``name`` with default options (``inception`` with the given weights)."""
    if name == "inception":
        return InceptionFeatures(device, weights=inception_weights_path)
    return build_extractor(feature_spec(name, ""), device)
