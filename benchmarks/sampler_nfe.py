"""Faithfulness against cost for each sampler: mean rank and top-1 of N held-out images versus NFE.

    python benchmarks/sampler_nfe.py --data cifar10_jpeg.npz:test --num-images 200       # the shipped default model
    python benchmarks/sampler_nfe.py --data cifar10_jpeg.npz:test --model runs/x/pipeline --num-images 8 \
        --out-csv /tmp/s.csv --out-png /tmp/s.png

Each sampler runs `rcdm.evaluate.evaluate` on the same references with the same per-sample seeds, so every
sampler starts sample k of image i from the same initial noise (DDPM then draws fresh noise at every step).
NFE is measured (UNet rows / samples), not assumed. Writes one CSV row per sampler and a PNG of rank vs NFE.
"""
from __future__ import annotations

import argparse
import csv
import re
import time
from pathlib import Path

import torch

from rcdm import Sampling
from rcdm.evaluate import evaluate
from rcdm.flags import DTYPES, load_pipeline

HERE = Path(__file__).resolve().parent
SAMPLERS = "ddpm:1000,ddpm:100,ddpm:50,ddim:50,ddim:20,ddim:10,dpm++:20,dpm++:10,unipc:10,ddpm:25:g2,ddim:25:g2"
COLUMNS = ["sampler", "scheduler", "steps", "guidance", "nfe", "num_images", "offset", "mean_rank", "median_rank",
           "top1_pct", "top5_pct", "fd", "fd_real_halves", "sample_seconds", "ms_per_sample"]


def parse_samplers(text: str) -> list[tuple[str, int, float]]:
    """'ddim:50,dpm++:10,ddim:25:g2' -> [('ddim', 50, 1.0), ('dpm++', 10, 1.0), ('ddim', 25, 2.0)].

    The optional third field gG is a classifier-free guidance scale; a guided step costs 2 NFE."""
    out = []
    for item in text.split(","):
        m = re.fullmatch(r"([\w+-]+):(\d+)(?::g(\d+(?:\.\d*)?))?", item.strip())
        if m is None:
            raise ValueError(f"sampler {item!r}: expected NAME:STEPS or NAME:STEPS:gSCALE, e.g. ddim:50 or ddim:25:g2")
        out.append((m[1], int(m[2]), float(m[3] or 1.0)))
    return out


def measure(pipe, data: str, num_images: int, scheduler: str, steps: int, guidance: float, seed: int,
            batch_size: int, offset: int = 0) -> dict:
    """One CSV row: faithfulness, measured NFE and sampling wall time of one sampler."""
    m = evaluate(pipe, data, num_images, Sampling(num_inference_steps=steps, scheduler=scheduler, guidance_scale=guidance, seed=seed,
                                                  batch_size=batch_size), offset=offset)
    r, t = m["rank"], m["timing"]["sample_seconds"]
    label = f"{scheduler}-{steps}" + (f"-g{guidance:g}" if guidance != 1.0 else "")
    return {"sampler": label, "scheduler": scheduler, "steps": steps, "guidance": guidance, "nfe": m["sampling"]["nfe"],
            "num_images": m["num_images"], "offset": offset, "mean_rank": r["mean"], "median_rank": r["median"],
            "top1_pct": r["top1_pct"], "top5_pct": r["top5_pct"], "fd": m["fd"]["samples_vs_real"],
            "fd_real_halves": m["fd"]["real_half_vs_half"], "sample_seconds": t,
            "ms_per_sample": 1000 * t / m["num_images"]}


def write_csv(rows: list[dict], path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)


def plot(rows: list[dict], path, title: str) -> None:
    """Mean rank (lower is better) and top-1 % (higher is better) against NFE on a log axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, key, label in zip(fig.subplots(1, 2), ("mean_rank", "top1_pct"), ("mean rank (lower is better)",
                                                                              "top-1 % (higher is better)")):
        for name, g in dict.fromkeys((r["scheduler"], r["guidance"]) for r in rows):  # a colour per family, run order
            pts = [r for r in rows if (r["scheduler"], r["guidance"]) == (name, g)]
            ax.plot([r["nfe"] for r in pts], [r[key] for r in pts], "o-" if g == 1.0 else "s--",
                    label=name if g == 1.0 else f"{name}, guidance {g:g}")
        for r in rows:
            ax.annotate(f"{r['steps']}", (r["nfe"], r[key]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set(xscale="log", xlabel="NFE (UNet evaluations per sample)", ylabel=label)
        ax.legend()
    chance = (rows[0]["num_images"] + 1) / 2
    if chance < 3 * max(r["mean_rank"] for r in rows):  # a line far above every point would only squash them
        fig.axes[0].axhline(chance, color="gray", ls="--", lw=1, label="chance")
        fig.axes[0].legend()
    fig.axes[0].set_ylabel(f"mean rank (lower is better; chance {chance:g})")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="pipeline directory or shipped name (default: the shipped default)")
    p.add_argument("--data", required=True, help="reference images, e.g. cifar10_jpeg.npz:test")
    p.add_argument("--num-images", type=int, default=200, help="references: the first N test images (default: 200)")
    p.add_argument("--offset", type=int, default=0,
                   help="start at this test image, e.g. 5000 for images disjoint from the reported first N "
                        "(default: 0)")
    p.add_argument("--samplers", default=SAMPLERS, help=f"comma-separated NAME:STEPS (default: {SAMPLERS})")
    p.add_argument("--seed", type=int, default=0, help="base seed of the per-sample noise (default: 0)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per sampler call (default: 64)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="denoiser precision; the encoder that scores the samples stays float32 (default: float32)")
    p.add_argument("--out-csv", default=str(HERE / "sampler_nfe.csv"), help="output CSV (default: beside this file)")
    p.add_argument("--out-png", default=str(HERE / "sampler_nfe.png"), help="output plot (default: beside this file)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    samplers = parse_samplers(args.samplers)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    t0, rows = time.time(), []
    for name, steps, guidance in samplers:
        rows.append(measure(pipe, args.data, args.num_images, name, steps, guidance, args.seed, args.batch_size,
                            args.offset))
        write_csv(rows, args.out_csv)  # after every sampler: a long run that dies keeps what it measured
        print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
              flush=True)
    plot(rows, args.out_png, f"{args.model or 'default model'} ({args.dtype}): {rows[0]['num_images']} test images "
                             f"from #{args.offset}, seed {args.seed}")
    print(f"wrote {args.out_csv} and {args.out_png} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
