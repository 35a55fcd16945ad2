"""Training throughput: scorelab's Lightning training step against a plain PyTorch loop.

Both run in this process on the same network (same initial weights), optimiser and
learning-rate warm-up, batch, precision, gradient clipping and data loader, for the same
number of timed steps after warm-up steps (which absorb torch.compile). The Lightning side
is the default run's step: NaN check, logging, progress bar (EMA and checkpointing off on
both sides). Printed per
backbone: images/s of each, their ratio (Lightning / plain; the Lightning overhead is
1 - ratio), and on a GPU the model FLOPs utilisation against the device's bf16 peak.

Settings compared:
  equal-fp32     both loops in fp32, no compile, no channels_last, no fused optimiser
  equal-default  both loops with scorelab's defaults ("auto": bf16, compile, channels_last,
                 fused on a GPU; the same as equal-fp32 on CPU, so skipped there)
  default-vs-fp32  Lightning with the defaults against the plain fp32 loop (GPU only)

    python benchmarks/train_throughput.py                       # CPU: small presets
    python benchmarks/train_throughput.py --backbones ddpmpp_cifar10,ncsnpp_cifar10,dit_b_2
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scorelab.cli.build import build_module  # noqa: E402
from scorelab.conf import CONF_DIR  # noqa: E402
from scorelab.util.speed import apply_speed, resolve_precision  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets (SXM parts).
BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}


def build(name: str, gpu: bool):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # warm-up only: the plain loop builds the schedule without a trainer, so it cannot
        # know the run's length; the schedule's shape costs nothing per step either way
        # (no Hydra run here: the run directory is only named, nothing is written there)
        cfg = compose("train", overrides=[f"backbone={name}", "~callbacks", "~logger", "~hydra",
                                          "optim.lr_decay=none", "paths.output_dir=unused"])
    shape = tuple(cfg.backbone.get("data_shape") or (1, 28, 28))
    module = build_module(cfg, shape, num_classes=0)
    return module, shape


def loader(shape, batch: int, steps: int, gpu: bool) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch * steps, *shape, generator=gen) * 2 - 1
    y = torch.zeros(batch * steps, dtype=torch.long)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False, drop_last=True,
                      pin_memory=gpu)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Clock(L.Callback):
    """Wall time from the first timed step's start to the last step's end."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(pl_module.device)
        self.end = time.perf_counter()


def run_lightning(module, data, warmup, precision, gpu, speed) -> float:
    apply_speed(module.model.backbone, compile=speed, channels_last=speed, gpu=gpu)
    module.fused_optimizer = speed and gpu
    clock = _Clock(warmup)
    trainer = L.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, precision=precision,
                        max_epochs=1, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0,
                        # the default run's progress bar (callbacks/default.yaml), on stderr
                        callbacks=[clock, TQDMProgressBar(refresh_rate=10)])
    trainer.fit(module, train_dataloaders=data)
    return clock.end - clock.start


def run_plain(module, data, warmup, precision, gpu, speed) -> float:
    device = torch.device("cuda" if gpu else "cpu")
    module = module.to(device)
    apply_speed(module.model.backbone, compile=speed, channels_last=speed, gpu=gpu)
    module.fused_optimizer = speed and gpu
    optim = module.configure_optimizers()
    opt, sched = (optim["optimizer"], optim["lr_scheduler"]["scheduler"]) \
        if isinstance(optim, dict) else (optim, None)
    bf16 = precision == "bf16-mixed"
    params = [p for p in module.parameters() if p.requires_grad]
    model, loss_fn = module.model.train(), module.loss_fn
    start = None
    for i, (x, _) in enumerate(data):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if sched is not None:
            sched.step()
    sync(device)
    return time.perf_counter() - start


def train_flops(module, shape, batch: int, device) -> float:
    """FLOPs of one forward + backward of the training loss (FlopCounterMode)."""
    model = copy.deepcopy(module.model).to(device)
    x = torch.randn(batch, *shape, device=device)
    with FlopCounterMode(display=False) as counter:
        module.loss_fn(model, x).backward()
    return float(counter.get_total_flops())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default=None,
                   help="comma-separated presets (default: unet,dit_mnist on CPU; "
                        "ddpmpp_cifar10,ncsnpp_cifar10,dit_b_2 on a GPU)")
    p.add_argument("--batch", type=int, default=None, help="default 64 on CPU, 128 on GPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps (10 CPU, 50 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (2 CPU, 15 GPU)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each loop (median)")
    args = p.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    names = (args.backbones or ("ddpmpp_cifar10,ncsnpp_cifar10,dit_b_2" if gpu
                                else "unet,dit_mnist")).split(",")
    batch = args.batch or (128 if gpu else 64)
    steps, warmup = args.steps or (50 if gpu else 10), args.warmup or (15 if gpu else 2)
    torch.set_float32_matmul_precision("high")
    default_precision = resolve_precision("auto", "auto")
    settings = [("equal-fp32", "32-true", False, "32-true", False)]
    if gpu:
        settings += [("equal-default", default_precision, True, default_precision, True),
                     ("default-vs-fp32", default_precision, True, "32-true", False)]
    peak = next((v for k, v in BF16_PEAK.items()
                 if gpu and k in torch.cuda.get_device_name()), None)
    print(f"device: {torch.cuda.get_device_name() if gpu else 'cpu'}; batch {batch}, "
          f"{steps} timed steps after {warmup}; median of {args.repeats}")
    header = f"{'backbone':<16}{'settings':<17}{'plain img/s':>12}{'lightning img/s':>16}" \
             f"{'ratio':>7}" + (f"{'MFU':>7}" if peak else "")
    print(header)
    for name in names:
        module, shape = build(name, gpu)
        flops = train_flops(module, shape, batch, device) if peak else None
        for label, l_prec, l_speed, p_prec, p_speed in settings:
            data = loader(shape, batch, warmup + steps, gpu)
            plain, light = [], []
            for _ in range(args.repeats):
                plain.append(run_plain(copy.deepcopy(module), data, warmup, p_prec, gpu,
                                       p_speed))
                light.append(run_lightning(copy.deepcopy(module), data, warmup, l_prec, gpu,
                                           l_speed))
            plain_ips = steps * batch / statistics.median(plain)
            light_ips = steps * batch / statistics.median(light)
            row = f"{name:<16}{label:<17}{plain_ips:>12.1f}{light_ips:>16.1f}" \
                  f"{light_ips / plain_ips:>7.3f}"
            if peak:
                row += f"{flops / batch * light_ips / peak:>7.1%}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
