"""Train the independent judge (`rcdm.judge`): a supervised CIFAR-10 classifier, from the training split only.

    python tools/train_judge.py --data cifar10_jpeg.npz --out pretrained/cifar10-judge --epochs 80   # 74 s, H200
    python tools/train_judge.py --data tests/data/cifar10_small.npz --out /tmp/judge --smoke    # the same code, CPU

Recipe (after Page's DAWNBench ResNet-9): SGD with Nesterov momentum 0.9, batch 512, a one-cycle LR (linear up to
--lr over the first --warmup-frac of the steps, then linearly down to 0), weight decay 5e-4 x batch on the summed
loss, label smoothing 0.2, random 32 px crops of the 4 px reflect-padded image, horizontal flips and 8 px cutout,
bf16 autocast and channels_last on a GPU. All images live on the device as uint8, so augmentation is a few tensor ops per batch.
The test split is used only for the final accuracy (mean of the image's and its mirror's logits) that the card
reports; nothing is chosen on it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rcdm from this checkout when run by path
from rcdm.data import NpzImages, decode_all  # noqa: E402
from rcdm.encoders.cifar import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from rcdm.judge import Judge, JudgeNet, save_judge  # noqa: E402


def load_split(path: str, split: str, limit: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) and labels (N,) on `device`."""
    x, y, _, _ = decode_all(NpzImages(path, split), desc=f"decoding {split}", resolution=32)
    if limit:
        x, y = x[:limit], y[:limit]
    return x.to(device), y.to(device)


def augment(x: torch.Tensor, gen: torch.Generator, cutout: int = 0) -> torch.Tensor:
    """Random 32 px crop of the 4 px reflect-padded batch, a random mirror and, with `cutout`, one random square of
    that side set to the mean image value (DeVries & Taylor 2017), per image: uint8 -> float in [0, 255]."""
    b = len(x)
    padded = F.pad(x.float(), (4, 4, 4, 4), mode="reflect")  # (B, 3, 40, 40)
    dx, dy = (torch.randint(0, 9, (2, b), generator=gen, device=gen.device)).to(x.device)
    rows = (dy.view(b, 1) + torch.arange(32, device=x.device)).view(b, 1, 32, 1).expand(b, 3, 32, 40)
    cropped = padded.gather(2, rows)  # (B, 3, 32, 40)
    cols = (dx.view(b, 1) + torch.arange(32, device=x.device)).view(b, 1, 1, 32).expand(b, 3, 32, 32)
    cropped = cropped.gather(3, cols)  # (B, 3, 32, 32)
    flip = (torch.rand(b, generator=gen, device=gen.device) < 0.5).to(x.device).view(b, 1, 1, 1)
    out = torch.where(flip, cropped.flip(3), cropped)
    if cutout:
        cy, cx = torch.randint(0, 33 - cutout, (2, b), generator=gen, device=gen.device).to(x.device)
        r = torch.arange(32, device=x.device)
        rows = (r.view(1, 32) >= cy.view(b, 1)) & (r.view(1, 32) < cy.view(b, 1) + cutout)  # (B, 32)
        cols = (r.view(1, 32) >= cx.view(b, 1)) & (r.view(1, 32) < cx.view(b, 1) + cutout)
        hole = (rows.view(b, 1, 32, 1) & cols.view(b, 1, 1, 32))
        out = torch.where(hole, out.mean(dim=(0, 2, 3), keepdim=True), out)
    return out


def one_cycle(step: int, total: int, warmup_frac: float) -> float:
    """LR multiplier: linear 0 -> 1 over the warmup, then linear 1 -> 0 at `total`."""
    up = max(1, int(total * warmup_frac))
    return step / up if step < up else max(0.0, (total - step) / max(1, total - up))


def train(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x_tr, y_tr = load_split(args.data, "train", args.limit, device)
    x_te, y_te = load_split(args.data, "test", args.limit, device)
    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1) * 255
    net = JudgeNet(tuple(args.widths)).to(device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    steps_per_epoch = len(x_tr) // args.batch_size
    total = steps_per_epoch * args.epochs
    decay, no_decay = [p for p in net.parameters() if p.ndim > 1], [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay * args.batch_size},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr / args.batch_size, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: one_cycle(s, total, args.warmup_frac))
    t0, step = time.time(), 0
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(x_tr), generator=gen, device=device)
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = ((augment(x_tr[idx], gen, args.cutout) - mean) / std).contiguous(memory_format=fmt)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.fp32):
                logits, _ = net(x)
            loss = F.cross_entropy(logits.float(), y_tr[idx], label_smoothing=args.label_smoothing, reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item() / args.batch_size:.4f} "
              f"({time.time() - t0:.1f} s)", flush=True)
    train_seconds = time.time() - t0
    judge = Judge(net.to(memory_format=torch.contiguous_format), CIFAR_MEAN, CIFAR_STD).to(device)
    logits, _ = judge.classify(x_te)
    acc = (logits.argmax(1) == y_te.cpu()).float().mean().item()
    info = {"test_accuracy": acc, "test_images": len(x_te), "train_images": len(x_tr), "epochs": args.epochs,
            "optimizer_steps": step, "train_seconds": round(train_seconds, 1),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "recipe": {k: v for k, v in vars(args).items() if k not in ("out", "data")}}
    save_judge(net.cpu(), args.out, CIFAR_MEAN, CIFAR_STD, info)
    print(json.dumps({k: info[k] for k in ("test_accuracy", "train_seconds", "optimizer_steps")}), flush=True)
    return info


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="packed-JPEG CIFAR-10 npz (train and test splits)")
    p.add_argument("--out", required=True, help="output directory (config.json + model.safetensors, fp16)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training split (default: 30)")
    p.add_argument("--batch-size", type=int, default=512, help="images per step (default: 512)")
    p.add_argument("--lr", type=float, default=0.4, help="peak LR of the mean loss (applied as lr/batch to the summed "
                                                        "loss) (default: 0.4)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="per-image weight decay (default: 5e-4)")
    p.add_argument("--label-smoothing", type=float, default=0.2, help="(default: 0.2)")
    p.add_argument("--cutout", type=int, default=8, help="side of the random square blanked per image; 0 = off "
                                                        "(default: 8)")
    p.add_argument("--warmup-frac", type=float, default=0.2, help="fraction of steps of LR warmup (default: 0.2)")
    p.add_argument("--widths", type=int, nargs=4, default=[64, 128, 256, 384], help="stage widths")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images of each split (0 = all)")
    p.add_argument("--smoke", action="store_true", help="tiny run on the CPU: 1 epoch, widths 8-16-16-16, batch 64")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.widths, args.batch_size, args.device = 1, [8, 16, 16, 16], 64, "cpu"
    if math.isnan(args.lr) or args.lr <= 0:
        p.error("--lr must be positive")
    return train(args)


if __name__ == "__main__":
    main()
