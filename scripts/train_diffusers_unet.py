"""Train a small diffusers ``UNet2DModel`` on MNIST-5k with diffusers' own training recipe
(the ``train_unconditional`` example's loop: ``DDPMScheduler.add_noise`` at uniform integer
timesteps, epsilon MSE, AdamW with warm-up and cosine decay, ``EMAModel``) and save it with
``save_pretrained`` as a DDPM pipeline directory (``unet/`` + ``scheduler/``): an offline
stand-in for a published model, which ``model=diffusers`` then samples and evaluates
(docs/pretrained.md).

    python scripts/train_diffusers_unet.py --out runs/diffusers_unet [--steps 1500]

The scheduler is saved with ``clip_sample=false``: scorelab's samplers do not clip x0_hat, so
diffusers' pipelines and scorelab sample the same ODE / chain (set it back in
scheduler/scheduler_config.json to compare with clipping).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from scorelab.data import MNIST5kDataModule  # noqa: E402


def unet(size: int = 28):
    """A UNet2DModel of about 1.6 M parameters for 28 x 28 digits (28 -> 14 -> 7)."""
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=size, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64, 64), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the pipeline directory to write")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from diffusers import DDPMPipeline, DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; refusing to overwrite a trained pipeline")
    torch.manual_seed(args.seed)
    dm = MNIST5kDataModule(batch_size=args.batch, seed=0)
    dm.setup("fit")
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=args.batch, shuffle=True,
                                         drop_last=True)
    model = unet()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                              clip_sample=False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-6)
    lr = get_cosine_schedule_with_warmup(opt, args.warmup, args.steps)
    ema = EMAModel(model.parameters(), decay=args.ema, use_ema_warmup=True)
    step, start, losses = 0, time.perf_counter(), []
    while step < args.steps:
        for x, _ in loader:
            noise = torch.randn_like(x)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (x.shape[0],))
            loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(x, noise, t), t).sample,
                                                noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            lr.step()
            ema.step(model.parameters())
            losses.append(loss.item())
            step += 1
            if step % 100 == 0 or step == args.steps:
                recent = sum(losses[-100:]) / len(losses[-100:])
                print(f"step {step}/{args.steps}  loss {recent:.4f}  "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
            if step == args.steps:
                break
    seconds = time.perf_counter() - start
    ema.copy_to(model.parameters())
    DDPMPipeline(unet=model.eval(), scheduler=scheduler).save_pretrained(out)
    (out / "training.json").write_text(json.dumps({
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "ema": args.ema,
        "seed": args.seed, "train_wall_time_s": round(seconds, 1),
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "parameters": sum(p.numel() for p in model.parameters())}, indent=2) + "\n")
    print(f"wrote {out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
