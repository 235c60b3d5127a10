"""Seconds per image for sampling at 32px (not a test): batch 1 against batch 16, median of `--reps` runs.

    python benchmarks/sampling_speed.py [--model DIR] [--steps 20] [--reps 3]
"""
import argparse
import json
import statistics
import time

import torch

from rcdm import RCDMPipeline


def seconds_per_image(pipe, h, steps, reps):
    times = []
    for r in range(reps + 1):  # the first run warms up oneDNN kernels and is dropped
        t = time.perf_counter()
        pipe(embeddings=h, num_inference_steps=steps, generator=torch.Generator().manual_seed(r))
        times.append((time.perf_counter() - t) / len(h))
    return statistics.median(times[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="pipeline directory (default: the shipped default)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default: 20)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per batch size (default: 3)")
    p.add_argument("--bf16", action="store_true", help="cast the UNet to bfloat16")
    args = p.parse_args()
    pipe = RCDMPipeline.from_pretrained(args.model)
    if args.bf16:
        pipe.to(dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    h = torch.randn(16, pipe.encoder.dim)
    res = {"unet_params_M": round(params, 2), "steps": args.steps, "threads": torch.get_num_threads(),
           "scheduler": type(pipe.scheduler).__name__, "dtype": str(pipe.unet.dtype)}
    for b in (1, 16):
        res[f"s_per_image_batch{b}"] = round(seconds_per_image(pipe, h[:b], args.steps, args.reps), 4)
    res["speedup_batch16"] = round(res["s_per_image_batch1"] / res["s_per_image_batch16"], 2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
