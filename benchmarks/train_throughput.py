"""Training throughput of the `cifar10-32` preset on this machine (not a test).

    python benchmarks/train_throughput.py --data ../shared/data/cifar10_jpeg.npz [--encoder file:DIR] [--iters 12]

Reports median img/s (over `--iters` timed steps after 3 warm-up steps) for:
- cached embeddings vs re-encoding with the frozen encoder every step;
- fp32 vs bf16 autocast;
- channels_last on vs off;
- the real `rcdm.training.loop` (data loading, EMA, logging) vs the bare step;
and the FLOP utilisation: UNet GFLOP per image per training step (torch.utils.flop_counter) x img/s, against a
measured bf16 2048^2 matmul peak.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from rcdm.encoders import load_encoder
from rcdm.model import build_denoiser
from rcdm.train_config import PRESETS, TrainConfig
from rcdm.training.setup import make_loss


def peak_gflops(dtype=torch.bfloat16, n=2048, reps=10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def step_fn(unet, opt, encoder, cfg: TrainConfig, bf16: bool, encode_each_step: bool):
    loss_fn = make_loss(cfg, unet)
    gen = torch.Generator().manual_seed(0)

    def step(x, h):
        if encode_each_step:
            h = encoder.encode((x + 1) / 2, autocast_dtype=torch.bfloat16 if bf16 else None)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(unet, x, h, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def measure(step, x, h, iters) -> float:
    """Median img/s over `iters` steps after 3 warm-up steps."""
    for _ in range(3):
        step(x, h)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step(x, h)
        times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times)


def unet_gflop_per_image(unet, cfg, x, h) -> float:
    with FlopCounterMode(display=False) as fc:
        make_loss(cfg, unet)(unet, x, h, torch.Generator().manual_seed(0)).backward()
    unet.zero_grad(set_to_none=True)
    return fc.get_total_flops() / len(x) / 1e9


def real_loop_img_s(cfg: TrainConfig, data: str, cache: str, steps: int) -> float:
    """img/s of `rcdm.training.loop.train` itself, timed between its 5th and last optimizer step."""
    import rcdm.training.loop as T

    stamps = []
    real = T.train_step

    def timed(*a, **k):
        out = real(*a, **k)
        stamps.append(time.perf_counter())
        return out

    T.train_step = timed
    try:
        with tempfile.TemporaryDirectory() as tmp:
            T.train(TrainConfig(**{**cfg.__dict__, "data": data, "cache": cache, "output_dir": tmp,
                                   "max_steps": steps + 5, "checkpoint_every": 10**9, "sample_every": 0}), "bench")
    finally:
        T.train_step = real
    return cfg.batch_size * (len(stamps) - 5) / (stamps[-1] - stamps[4])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="packed-JPEG npz with a train split")
    p.add_argument("--encoder", default="", help="encoder spec (default: the shipped SimCLR encoder)")
    p.add_argument("--cache", default="", help="embedding cache for --data, to time the real training loop")
    p.add_argument("--iters", type=int, default=12, help="timed steps per variant (default: 12)")
    p.add_argument("--out", default="benchmarks/train_throughput.json", help="where to write the numbers")
    args = p.parse_args()
    from rcdm.data import NpzImages

    cfg = PRESETS["cifar10-32"]
    root = Path(__file__).resolve().parents[1]
    encoder = load_encoder(args.encoder or f"file:{root / 'pretrained/simclr-cifar10-r18w32'}", "backbone")
    ds = NpzImages(args.data)
    x = torch.stack([ds[i][0] for i in range(cfg.batch_size)]).float().div(127.5).sub(1)  # (B, 3, 32, 32)
    h = encoder.encode((x + 1) / 2)
    res = {"batch_size": cfg.batch_size, "threads": torch.get_num_threads(), "img_s": {}}
    for name, bf16, cl, enc in [("cache+bf16+channels_last", True, True, False), ("encode+bf16+channels_last", True, True, True),
                                ("cache+fp32+channels_last", False, True, False), ("cache+bf16+contiguous", True, False, False)]:
        torch.manual_seed(0)
        c = TrainConfig(**{**cfg.__dict__, "channels_last": cl})
        unet = _unet(c, encoder.dim, cl)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        res["img_s"][name] = round(measure(step_fn(unet, opt, encoder, c, bf16, enc), x, h, args.iters), 2)
        print(name, res["img_s"][name], "img/s", flush=True)
    r = res["img_s"]
    res["ratios"] = {"cache_vs_encode": round(r["cache+bf16+channels_last"] / r["encode+bf16+channels_last"], 2),
                     "bf16_vs_fp32": round(r["cache+bf16+channels_last"] / r["cache+fp32+channels_last"], 2),
                     "channels_last_vs_contiguous": round(r["cache+bf16+channels_last"] / r["cache+bf16+contiguous"], 2)}
    res["unet_gflop_per_image_step"] = round(unet_gflop_per_image(_unet(cfg, encoder.dim, True), cfg, x, h), 3)
    res["peak_bf16_matmul_gflops"] = round(peak_gflops(), 1)
    res["utilisation"] = round(res["unet_gflop_per_image_step"] * r["cache+bf16+channels_last"] / res["peak_bf16_matmul_gflops"], 3)
    if args.cache:
        res["img_s"]["real_training_loop"] = round(real_loop_img_s(cfg, args.data, args.cache, args.iters), 2)
        res["ratios"]["real_loop_vs_bare_step"] = round(res["img_s"]["real_training_loop"] / r["cache+bf16+channels_last"], 2)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


def _unet(cfg, dim, channels_last):
    unet = build_denoiser(cfg.unet, dim, cfg.resolution)
    return unet.to(memory_format=torch.channels_last) if channels_last else unet


if __name__ == "__main__":
    main()
