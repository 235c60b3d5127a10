"""Score candidate models side by side: `rcdm.evaluate` on named image sets, several noise seeds, one JSON line each.

    python tools/score_models.py --model backbone=pretrained/rcdm-cifar10-backbone cand=runs/x/pipeline \
        --data cifar10_jpeg.npz:test --classifier pretrained/cifar10-judge \
        --set reported=0:200 choosing=5000:400 fd500=0:500:1 --seeds 0 1 2 --out scores.jsonl

Sets are OFFSET:N[:SEEDS] slices of the data (SEEDS: only the first that many of --seeds); CIFAR-10's test split
is class-interleaved, so every slice of it is balanced. The convention: ship decisions are made on `choosing` (test 5,000-5,399) so that `reported` (the first
200) stays an unbiased estimate; `fd500` gives the 500-vs-500 Fréchet distances. Every line records the model's
weight hash, the git commit, the command and the machine, and lines are appended as they finish, so a killed run
keeps what it measured. A per-model, per-set mean over seeds is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rcdm from this checkout when run by path
from rcdm.encoders.frozen import state_dict_sha256  # noqa: E402
from rcdm.evaluate import evaluate  # noqa: E402
from rcdm.flags import load_pipeline  # noqa: E402
from rcdm.judge import load_judge  # noqa: E402
from rcdm.sampling import Sampling  # noqa: E402

KEYS = ("rank_mean", "top1_pct", "fd", "clf_acc_samples", "clf_acc_sources", "clf_fd", "clf_fd_real")


def parse_pair(text: str, what: str) -> tuple[str, str]:
    label, sep, value = text.partition("=")
    if not sep or not label or not value:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected LABEL=VALUE")
    return label, value


def weights_hash(pipe) -> str:
    """The denoiser's weights as loaded, hashed as encoder fingerprints are: which model a line is about."""
    return state_dict_sha256(pipe.unet.state_dict())[:16]


def provenance(device: str) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    machine = torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads"
    return {"commit": commit, "command": shlex.join([Path(sys.argv[0]).name] + sys.argv[1:]), "machine": machine,
            "torch": torch.__version__}


def row(label: str, set_name: str, seed: int, m: dict) -> dict:
    c = m["classifier"]
    return {"model": label, "set": set_name, "seed": seed, "num_images": m["num_images"], "offset": m["offset"],
            "rank_mean": m["rank"]["mean"], "top1_pct": m["rank"]["top1_pct"], "top5_pct": m["rank"]["top5_pct"],
            "fd": m["fd"]["samples_vs_real"], "clf_acc_samples": c.get("accuracy_samples"),
            "clf_acc_sources": c.get("accuracy_sources"), "clf_fd": c.get("fd"), "clf_fd_real": c.get("fd_real"),
            "clf_per_class": c.get("per_class"), "sampling": m["sampling"],
            "sample_seconds": round(m["timing"]["sample_seconds"], 2)}


def summarise(rows: list[dict]) -> list[dict]:
    """The mean over seeds of every score, per (model, set), in first-seen order."""
    out = []
    for model, set_name in dict.fromkeys((r["model"], r["set"]) for r in rows):
        mine = [r for r in rows if r["model"] == model and r["set"] == set_name]
        means = {k: statistics.fmean(r[k] for r in mine) if all(r[k] is not None for r in mine) else None
                 for k in KEYS}
        out.append({"model": model, "set": set_name, "seeds": len(mine), **means})
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, type=lambda t: parse_pair(t, "--model"),
                   help="candidates as LABEL=PIPELINE_DIR (a directory, shipped name or Hub id)")
    p.add_argument("--data", required=True, help="reference images, e.g. cifar10_jpeg.npz:test")
    p.add_argument("--set", nargs="+", default=["choosing=5000:400"], type=lambda t: parse_pair(t, "--set"),
                   help="image sets as NAME=OFFSET:N[:SEEDS] (default: choosing=5000:400)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="noise seeds (default: 0 1 2)")
    p.add_argument("--classifier", default=None, help="independent judge directory (default: none)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch-size", type=int, default=64, help="samples per sampler call (default: 64)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: each model's recorded choice)")
    p.add_argument("--scheduler", default=None,
                   help="one sampler for every model, e.g. ddim-logsnr (default: each model's recorded choice)")
    p.add_argument("--out", required=True, help="JSON-lines output, appended to")
    args = p.parse_args(argv)
    sets = []
    for name, spec in args.set:
        offset, n, *most = map(int, spec.split(":"))
        sets.append((name, offset, n, args.seeds[: most[0]] if most else args.seeds))
    judge = load_judge(args.classifier, args.device) if args.classifier else None
    prov, rows = provenance(args.device), []
    for label, path in args.model:
        pipe = load_pipeline(path, args.device, args.dtype)
        model = {"path": path, "weights_sha256": weights_hash(pipe)}
        for set_name, offset, n, seeds in sets:
            for seed in seeds:
                t0 = time.time()
                run = Sampling(seed=seed, batch_size=args.batch_size, num_inference_steps=args.steps,
                               scheduler=args.scheduler)
                m = evaluate(pipe, args.data, n, run, progress=False,
                             offset=offset, classifier=judge)
                rows.append(row(label, set_name, seed, m))
                with open(args.out, "a") as f:
                    f.write(json.dumps({**rows[-1], **model, **prov}) + "\n")
                r = rows[-1]
                clf = f", judge {100 * r['clf_acc_samples']:.1f}% / {100 * r['clf_acc_sources']:.1f}%, judge FD " \
                      f"{r['clf_fd']:.2f}" if judge else ""
                print(f"{label} {set_name} seed {seed}: rank {r['rank_mean']:.3f}, top-1 {r['top1_pct']:.2f}%, "
                      f"FD {r['fd']:.3f}{clf} ({time.time() - t0:.1f} s)", flush=True)
    summary = summarise(rows)
    for s in summary:
        print(json.dumps(s), flush=True)
    return summary


if __name__ == "__main__":
    main()
