"""Sample-quality and likelihood metrics in one registry (``registry.METRICS``), computed alike
by the training callback (``callbacks.Metrics``) and evaluate.py: FID, IS, KID, PRDC, class
accuracy and per-class FID on swappable feature extractors (``features.FEATURES``: the shipped
digit classifier, Inception, DINOv2 or any torchvision / timm network from a local file, raw
vectors); bits/dim; exact metrics of the Gaussian-mixture toy (energy distance, NLL gap).

May import torch, torch-fidelity, Lightning (the callback) and the math packages; not Hydra.
"""

from scorelab.metrics import (caption, exact, likelihood, sample_quality,  # noqa: F401
                              straightness)  # (register)
from scorelab.metrics.features import FEATURES, build_extractor, feature_spec
from scorelab.metrics.registry import METRICS, build_metric, get_metric

__all__ = ["FEATURES", "METRICS", "build_extractor", "build_metric", "feature_spec",
           "get_metric"]
