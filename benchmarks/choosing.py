"""Candidate models on the choosing images: test images 5,000-5,399, disjoint from the reported first 200.

    python benchmarks/choosing.py --model backbone=pretrained/rcdm-cifar10-backbone "stint 21=runs/x/pipeline" \
        --seeds 0 1 2 --out-csv benchmarks/choosing_session17.csv

Every candidate is scored with the same sampler (DDIM-20 unless --sampler), the same per-sample noise for each seed
and bf16, by `sampler_nfe.measure`; one CSV row per (model, seed), written after every row so that a killed run
keeps what it measured, then a per-model summary (the mean over seeds) is printed. Ship decisions are made on these
images so that the reported 200 stay an unbiased estimate.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch

from rcdm.flags import load_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, also when loaded by path (the tests)
from sampler_nfe import COLUMNS, measure, parse_samplers  # noqa: E402

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpeg.npz") + ":test"


def parse_model(text: str) -> tuple[str, str]:
    """'LABEL=PATH' -> (LABEL, PATH); a bare PATH is its own label."""
    label, _, path = text.rpartition("=")
    return (label or path), path


def summarise(rows: list[dict]) -> None:
    for label in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == label]
        mean = {k: statistics.fmean(r[k] for r in mine) for k in ("top1_pct", "mean_rank", "fd")}
        print(f"{label}: {len(mine)} seeds, top-1 {mean['top1_pct']:.2f}%, mean rank {mean['mean_rank']:.3f}, "
              f"FD {mean['fd']:.2f} (per seed: " + ", ".join(f"{r['top1_pct']:.2f}% / {r['fd']:.2f}" for r in mine)
              + ")", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, type=parse_model,
                   help="candidates as LABEL=PIPELINE_DIR (or a bare directory / shipped name)")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"reference images (default: {DEFAULT_DATA})")
    p.add_argument("--num-images", type=int, default=400, help="references (default: 400)")
    p.add_argument("--offset", type=int, default=5000, help="first reference image (default: 5000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="noise seeds (default: 0 1 2)")
    p.add_argument("--sampler", default="ddim:20", help="NAME:STEPS[:gSCALE] (default: ddim:20)")
    p.add_argument("--layer", default="backbone", help="the first CSV column, e.g. backbone or projector")
    p.add_argument("--batch-size", type=int, default=64, help="samples per sampler call (default: 64)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default (default: 0)")
    p.add_argument("--out-csv", required=True, help="output CSV (rows for every model and seed)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    (name, steps, guidance), = parse_samplers(args.sampler)
    rows = []
    for label, path in args.model:
        pipe = load_pipeline(path, "cpu", "bfloat16")
        for seed in args.seeds:
            row = measure(pipe, args.data, args.num_images, name, steps, guidance, seed, args.batch_size, args.offset)
            rows.append({"layer": args.layer, "model": label, "seed": seed, **row})
            with open(args.out_csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["layer", "model", "seed", *COLUMNS])
                w.writeheader()
                w.writerows(rows)
            print(f"{label} seed {seed}: top-1 {row['top1_pct']:.2f}%, mean rank {row['mean_rank']:.4g}, "
                  f"FD {row['fd']:.3f} ({row['sample_seconds']:.0f} s)", flush=True)
    summarise(rows)


if __name__ == "__main__":
    main()
