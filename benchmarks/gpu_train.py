"""Training and embedding throughput on one CUDA device: img/s, peak memory and MFU (not a test).

    python benchmarks/gpu_train.py --out benchmarks/gpu_train       # imagenet-128; ~7 min (--time-budget 420)
    python benchmarks/gpu_train.py --smoke --out /tmp/gpu_train     # the same code path, tiny, on the CPU (~10 s)
    bash benchmarks/gpu_train_device.sh                             # the one-shot run on a lent GPU machine

Training: a step is the loop's own `rcdm.training.loop.train_step` (Accelerate's bf16 autocast, the preset's loss,
gradient clipping, fused AdamW, the LR schedule) plus the EMA update, on a UNet built from the preset's UNetConfig (422.6M
parameters for imagenet-128) and synthetic data already on the device: x0 uniform in [-1, 1], h Gaussian of
--embedding-dim. No dataset or cache is read, so data loading is not timed. Each configuration (torch.compile off /
on x channels_last off / on x --batch-sizes) runs --warmup-steps, then --steps between two synchronisations.

MFU = model FLOPs per step / step time / the device's dense bf16 peak (a datasheet table, or --peak-tflops; an
unknown device leaves MFU empty). Model FLOPs are counted by torch.utils.flop_counter.FlopCounterMode over one
forward + backward of the training loss: matmuls, convolutions and attention; the optimizer, the EMA and elementwise
ops count zero, as is usual for MFU.

Embedding: `rcdm embed`'s encoder call, FrozenEncoder.encode, on uint8 batches from the host (moved to the device
and normalised there) under bf16 autocast, with a random-init torchvision encoder (ResNet-50 at 224 px, batch 256).

A configuration that fails (out of memory, a compile error) becomes a row with its error; once --time-budget is spent
the remaining ones become 'skipped' rows. The CSV and JSON are rewritten after every row, so a killed run keeps
what it measured.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import itertools
import json
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s. The first key found in
# torch.cuda.get_device_name() wins, so the variants come before their family ("NVIDIA H100 80GB HBM3" is the SXM).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H200 NVL", 835.5),
    ("H100", 989.5),
    ("H200", 989.5),
    ("A100", 312.0),
    ("L40S", 362.05),
)
COLUMNS = ("kind", "config", "model", "params_m", "batch", "resolution", "dtype", "compile", "channels_last",
           "warmup_steps", "timed_steps", "img_s", "step_ms", "first_step_s", "peak_mem_gib", "gflop_per_step",
           "achieved_tflops", "mfu", "status", "error")
# A first compiled configuration is started only with this much budget left: the ADM UNet's compile takes minutes.
FIRST_COMPILE_GUESS_S = 90.0
SMOKE_UNET = {"block_out_channels": (32, 64), "attention_levels": (1,), "num_heads": 2}  # the preset's ADM, shrunk
SMOKE_DEFAULTS = {"batch_sizes": [4], "compile": "off", "channels_last": "off", "warmup_steps": 1, "steps": 2,
                  "embed_arch": "resnet18", "embed_resolution": 64, "embed_batch": 8, "embed_steps": 2}


# -------------------------------------------------------------------------------------------------- arithmetic
def device_peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a device by its name, or None if the table does not know it."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in name.lower()), None)


def resolve_peak(name: str, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from): --peak-tflops first, then the table."""
    if override:
        return override, "--peak-tflops"
    peak = device_peak_tflops(name)
    if peak is None:
        return None, f"unknown device {name!r}: MFU left empty (pass --peak-tflops)"
    return peak, f"datasheet dense bf16 peak of {name}"


def mfu(flops_per_step: float, step_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak; None without a peak or a time."""
    if not peak_tflops or not step_s or not flops_per_step:
        return None
    return flops_per_step / step_s / (peak_tflops * 1e12)


def count_flops(fn) -> int:
    """FLOPs of the matmuls, convolutions and attention that `fn()` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def time_steps(step, warmup: int, steps: int, sync) -> tuple[float, float]:
    """(seconds of the first step, which compiles if anything does; mean seconds per step over `steps` steps after
    `warmup` in all). Only the window ends synchronise, so the host queues steps ahead as in training."""
    t = time.perf_counter()
    step(0)
    sync()
    first = time.perf_counter() - t
    for i in range(1, warmup):
        step(i)
    sync()
    t = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync()
    return first, (time.perf_counter() - t) / steps


# -------------------------------------------------------------------------------------------------- training
def mixed_precision(args) -> str:
    """Accelerate's name for --precision."""
    return {"bf16": "bf16", "fp32": "no"}[args.precision]


def train_config(args, compile_: bool, channels_last: bool, batch: int):
    """The preset with one benchmark configuration's per-device batch, compile and memory format."""
    from rcdm.train_config import PRESETS

    cfg = PRESETS[args.preset]
    if args.smoke:  # the same architecture and loss, small enough for a CPU
        cfg = dataclasses.replace(cfg, resolution=32, unet=dataclasses.replace(cfg.unet, **SMOKE_UNET))
    return dataclasses.replace(cfg, batch_size=batch, global_batch_size=0, grad_accum=1, compile=compile_,
                               channels_last=channels_last, mixed_precision=mixed_precision(args))


def build_unet(cfg, dim: int, device: torch.device):
    """The preset's denoiser, initialised on the device. Built from its UNetConfig, as
    rcdm.training.setup.build_unet does without a cache (which it reads only for the embedding statistics, set here from synthetic h)."""
    from rcdm.model import build_denoiser

    torch.manual_seed(0)
    with torch.device(device):  # a 422M-parameter init on the host takes longer than the whole timed window
        unet = build_denoiser(cfg.unet, dim, cfg.resolution, null_embedding=cfg.cond_drop_prob > 0)
    unet.set_embedding_stats(torch.randn(1024, dim, device=device))
    return unet.to(memory_format=torch.channels_last) if cfg.channels_last else unet


def synthetic_batch(cfg, dim: int, device: torch.device):
    """x0 (B, 3, R, R) uniform in [-1, 1] and h (B, dim), already on the device."""
    g = torch.Generator(device).manual_seed(0)
    x0 = torch.rand(cfg.batch_size, 3, cfg.resolution, cfg.resolution, generator=g, device=device) * 2 - 1
    return x0, torch.randn(cfg.batch_size, dim, generator=g, device=device)


def loss_flops(cfg, unet, acc, x0, h) -> int:
    """FLOPs of one forward + backward of the training loss, on the eager module (before any compile)."""
    from rcdm.training.setup import make_loss

    loss_fn = make_loss(cfg, unet)
    g = torch.Generator(x0.device).manual_seed(0)

    def fwd_bwd():
        with acc.autocast():
            loss = loss_fn(unet, x0, h, g)
        loss.backward()

    flops = count_flops(fwd_bwd)
    unet.zero_grad(set_to_none=True)
    return flops


def training_step(cfg, unet, acc, x0, h):
    """step(i): rcdm.training.loop.train_step then the EMA update, set up as rcdm.training.loop.prepare sets them up."""
    from rcdm.training.loop import train_step
    from rcdm.training.runtime import make_lr_schedule
    from rcdm.training.setup import make_ema, make_loss, make_optimizer

    if cfg.compile:
        unet.compile()  # in place, as training does
    loss_fn = make_loss(cfg, unet)
    opt = make_optimizer(cfg, unet, acc.device)
    unet, opt, lr_sched = acc.prepare(unet, opt, make_lr_schedule(opt, cfg))
    ema = make_ema(cfg, acc, unet)
    batches = itertools.repeat((x0, h))

    def step(i: int):
        train_step(unet, opt, lr_sched, batches, loss_fn, cfg, acc, i)
        ema.step(acc.unwrap_model(unet).parameters())
    return step


def bench_train(args, cfg, acc, device: torch.device) -> dict:
    """One configuration's measured row fields."""
    reset_peak_memory(device)
    unet = build_unet(cfg, args.embedding_dim, device)
    x0, h = synthetic_batch(cfg, args.embedding_dim, device)
    flops = loss_flops(cfg, unet, acc, x0, h)
    params = sum(p.numel() for p in unet.parameters())
    step = training_step(cfg, unet, acc, x0, h)
    reset_peak_memory(device)  # the peak from here on: weights, grads, AdamW and EMA state, and the steps
    first, step_s = time_steps(step, args.warmup_steps, args.steps, lambda: synchronize(device))
    return {"params_m": round(params / 1e6, 2), "first_step_s": round(first, 2), **measured(cfg.batch_size, step_s,
            flops, args.peak, device)}


# -------------------------------------------------------------------------------------------------- embedding
def embed_encoder(arch: str, resolution: int, device: torch.device):
    """A random-init torchvision encoder as `rcdm embed` would load it. `rcdm embed` refuses random-init encoders
    for caches (no pipeline could rebuild the network), so this times the call it makes, FrozenEncoder.encode,
    directly: the timing does not depend on the weights."""
    from rcdm.encoders import load_encoder
    from rcdm.encoders.frozen import FrozenEncoder

    enc = load_encoder(f"torchvision:{arch}", device=device)
    if resolution != enc.preprocess.crop:  # --smoke: a small input, taken as already resized and cropped
        pre = dataclasses.replace(enc.preprocess, size=resolution, crop=resolution)
        enc = FrozenEncoder(enc.net, enc.spec, enc.layer, pre)
    return enc


def bench_embed(args, device: torch.device) -> dict:
    """The embed row's measured fields: uint8 host batches in, as the DataLoader of `rcdm embed` yields them."""
    reset_peak_memory(device)
    enc = embed_encoder(args.embed_arch, args.embed_resolution, device)
    r, b = args.embed_resolution, args.embed_batch
    x = torch.randint(0, 256, (b, 3, r, r), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def step(i: int):
        enc.encode(x, batch_size=b, autocast_dtype=dtype)

    flops = count_flops(lambda: step(0))
    first, step_s = time_steps(step, args.warmup_steps, args.embed_steps, lambda: synchronize(device))
    params = sum(p.numel() for p in enc.parameters())
    return {"params_m": round(params / 1e6, 2), "first_step_s": round(first, 2),
            **measured(b, step_s, flops, args.peak, device)}


# -------------------------------------------------------------------------------------------------- device
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def measured(batch: int, step_s: float, flops: int, peak: float | None, device: torch.device) -> dict:
    """The row fields every measurement shares."""
    u = mfu(flops, step_s, peak)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"img_s": round(batch / step_s, 2), "step_ms": round(step_s * 1e3, 2),
            "peak_mem_gib": None if mem is None else round(mem, 2), "gflop_per_step": round(flops / 1e9, 3),
            "achieved_tflops": round(flops / step_s / 1e12, 4), "mfu": None if u is None else round(u, 4)}


def release(acc) -> None:
    """Forget the last configuration: Accelerate's references, compiled graphs (each configuration compiles
    afresh, with static shapes, as a run does), and the allocator's cache."""
    acc.free_memory()
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float | None:
    """A measured bf16 matmul rate: the ceiling this device reaches in practice (the datasheet peak is higher)."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return round(2 * n**3 * reps / (time.perf_counter() - t) / 1e12, 1)


# -------------------------------------------------------------------------------------------------- the run
class Budget:
    """Starts a configuration only if the time left covers the longest one of its kind so far (a first compiled one
    is guessed at FIRST_COMPILE_GUESS_S), so a run ends near --time-budget instead of one compile past it."""

    def __init__(self, seconds: float):
        self.t0, self.seconds, self.longest = time.perf_counter(), seconds, {}

    def allows(self, kind: str) -> bool:
        left = self.seconds - (time.perf_counter() - self.t0)
        return left > self.longest.get(kind, FIRST_COMPILE_GUESS_S if kind == "compile" else 0.0)

    def record(self, kind: str, seconds: float) -> None:
        self.longest[kind] = max(seconds, self.longest.get(kind, 0.0))


def guarded(row: dict, measure) -> dict:
    """`row` completed by `measure()`, or by the error that stopped it (out of memory, a compile failure): one
    configuration never ends the run."""
    try:
        return {**row, **measure(), "status": "ok"}
    except Exception as e:  # noqa: BLE001 - any failure is this configuration's result
        first_line = (str(e).strip().splitlines() or [""])[0]
        return {**row, "status": "error", "error": f"{type(e).__name__}: {first_line}"[:500]}


def train_rows(args) -> list[tuple[str, dict, object]]:
    """(budget kind, row identity, config) for every training configuration, cheap ones first."""
    out = []
    for compile_, cl, batch in itertools.product(args.compile, args.channels_last, args.batch_sizes):
        cfg = train_config(args, compile_, cl, batch)
        name = f"{args.precision}-{'compile' if compile_ else 'eager'}-{'cl' if cl else 'nchw'}-b{batch}"
        row = {"kind": "train", "config": name, "model": args.preset + (" (smoke)" if args.smoke else ""),
               "batch": batch, "resolution": cfg.resolution, "dtype": args.precision, "compile": compile_,
               "channels_last": cl, "warmup_steps": args.warmup_steps, "timed_steps": args.steps}
        out.append(("compile" if compile_ else "eager", row, cfg))
    return out


def embed_row(args) -> dict:
    return {"kind": "embed", "config": f"{args.precision}-{args.embed_arch}-{args.embed_resolution}px-b"
                                       f"{args.embed_batch}",
            "model": f"torchvision:{args.embed_arch} (random init)", "batch": args.embed_batch,
            "resolution": args.embed_resolution, "dtype": args.precision, "compile": False, "channels_last": False,
            "warmup_steps": args.warmup_steps, "timed_steps": args.embed_steps}


def run(args, device: torch.device, write) -> list[dict]:
    """Every row, in order: the embedding, then the training configurations; `write(rows)` after each."""
    from accelerate import Accelerator

    from rcdm.training.runtime import enable_tf32

    enable_tf32(device)  # as training does
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision(args))
    plan = [("eager", embed_row(args), partial(bench_embed, args, device))] if args.embed_steps else []
    plan += [(kind, row, partial(bench_train, args, cfg, acc, device)) for kind, row, cfg in train_rows(args)]
    budget, rows = Budget(args.time_budget), []
    for kind, row, measure in plan:
        if budget.allows(kind):
            t = time.perf_counter()
            rows.append(guarded(row, measure))
            release(acc)
            budget.record(kind, time.perf_counter() - t)
        else:
            rows.append({**row, "status": "skipped", "error": f"--time-budget {args.time_budget:g} s spent"})
        print(format_row(rows[-1]), flush=True)
        write(rows)
    return rows


# -------------------------------------------------------------------------------------------------- output
def write_results(out: Path, meta: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "gpu_train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS} for r in rows)
    (out / "gpu_train.json").write_text(json.dumps({"meta": meta, "rows": [
        {k: r.get(k) for k in COLUMNS} for r in rows]}, indent=2))


TABLE = (("config", 28), ("img_s", 9), ("step_ms", 9), ("peak_mem_gib", 12), ("achieved_tflops", 15), ("mfu", 7),
         ("status", 7))


def format_row(r: dict) -> str:
    cells = [f"{'' if r.get(k) is None else r.get(k)!s:>{w}}" for k, w in TABLE]
    return f"{r['kind']:>5} " + " ".join(cells) + (f"  {r['error']}" if r.get("error") else "")


def print_table(meta: dict, rows: list[dict]) -> None:
    print(f"\n{meta['device_name']} | torch {meta['torch']} | peak {meta['peak_tflops']} TFLOP/s "
          f"({meta['peak_source']}) | measured bf16 matmul {meta['matmul_tflops']} TFLOP/s | {meta['wall_s']} s")
    print(f"{'kind':>5} " + " ".join(f"{k:>{w}}" for k, w in TABLE))
    for r in rows:
        print(format_row(r))


def describe_run(args, device: torch.device, name: str, peak_source: str) -> dict:
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "peak_tflops": args.peak, "peak_source": peak_source, "matmul_tflops": matmul_tflops(device),
            "preset": args.preset, "smoke": args.smoke, "embedding_dim": args.embedding_dim,
            "time_budget_s": args.time_budget, "wall_s": None, "command": " ".join(sys.argv),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# -------------------------------------------------------------------------------------------------- CLI
def on_off(value: str) -> list[bool]:
    return {"off": [False], "on": [True], "both": [False, True]}[value]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/gpu_train", help="folder for gpu_train.csv and gpu_train.json "
                                                                 "(default: benchmarks/gpu_train)")
    p.add_argument("--preset", default="imagenet-128", help="rcdm.train preset to time (default: imagenet-128)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32], help="images per device (default: 8 32)")
    p.add_argument("--compile", choices=["off", "on", "both"], default="both",
                   help="torch.compile the UNet, as `rcdm train --compile` does (default: both)")
    p.add_argument("--channels-last", choices=["off", "on", "both"], default="both",
                   help="channels_last memory format (default: both)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="bf16: Accelerate's bf16 mixed precision for training, bf16 autocast for the encoder; fp32: "
                        "neither (default: bf16)")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps per configuration, the first of "
                                                               "which compiles (default: 5; at least 1)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per configuration (default: 20)")
    p.add_argument("--embedding-dim", type=int, default=2048, help="size of the synthetic h (default: 2048, "
                                                                   "a ResNet-50's)")
    p.add_argument("--embed-arch", default="resnet50", help="torchvision encoder to time (default: resnet50)")
    p.add_argument("--embed-resolution", type=int, default=224, help="encoder input size (default: 224)")
    p.add_argument("--embed-batch", type=int, default=256, help="images per encoder call (default: 256)")
    p.add_argument("--embed-steps", type=int, default=10, help="timed encoder calls (default: 10; 0 = no "
                                                               "embedding row)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak for MFU, TFLOP/s "
                   f"(default: looked up by device name: {', '.join(f'{k} {v:g}' for k, v in PEAK_BF16_TFLOPS)})")
    p.add_argument("--time-budget", type=float, default=420.0, help="seconds for the whole run: a configuration "
                   "starts only if the time left covers the longest of its kind so far (a first compiled one: "
                   f"{FIRST_COMPILE_GUESS_S:g} s); the others are recorded as skipped (default: 420)")
    p.add_argument("--smoke", action="store_true", help="a tiny run of the same code on the CPU: the preset's "
                   "UNet shrunk to 32 px (block_out_channels 32 64), batch 4, eager, NCHW, 1 warm-up + 2 timed steps; "
                   "a resnet18 at 64 px, batch 8. Flags given explicitly override these")
    if "--smoke" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(**SMOKE_DEFAULTS)  # flags given explicitly still win
    args = p.parse_args(argv)
    if args.warmup_steps < 1 or args.steps < 1:
        p.error("--warmup-steps and --steps must be at least 1")
    from rcdm.train_config import PRESETS

    if args.preset not in PRESETS:
        p.error(f"--preset {args.preset!r} is not one of {', '.join(PRESETS)}")
    args.compile, args.channels_last = on_off(args.compile), on_off(args.channels_last)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    t0 = time.perf_counter()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    args.peak, peak_source = resolve_peak(name, args.peak_tflops)
    meta = describe_run(args, device, name, peak_source)
    out = Path(args.out)
    rows = run(args, device, lambda rows: write_results(out, meta, rows))
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    write_results(out, meta, rows)
    print_table(meta, rows)
    print(f"wrote {out / 'gpu_train.csv'} and {out / 'gpu_train.json'}")
    return rows


if __name__ == "__main__":
    main()
