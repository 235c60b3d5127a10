"""What a run shows while it trains: sample grids of the watched images, and their held-out rank and top-1.

The grids draw as `rcdm sample` does (rcdm.sampling: sample k of grid row i from the generator of (seed, i, k)),
so `rcdm sample --seed S` of the exported model on the grid's input images draws the last grid's samples."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..heldout import HeldOut, resolve_spec
from ..images import to_pil
from ..sampling import Sampling, sample
from ..train_config import TrainConfig
from ..viz import image_grid
from .data import PairedDataset
from .export import ema_pipeline


def grid_rows(labels: torch.Tensor, n: int) -> list[int]:
    """Cache rows a sample grid shows: the first item of each class in cache order, then the items after the
    first, n in all (a sorted ImageFolder would otherwise give n images of its first class)."""
    seen, firsts = set(), []
    for i, y in enumerate(labels.tolist()):
        if y not in seen:
            seen.add(y)
            firsts.append(i)
            if len(firsts) == n:
                return firsts
    chosen = set(firsts)
    return firsts + [i for i in range(len(labels)) if i not in chosen][: n - len(firsts)]


def grid_inputs(paired: PairedDataset, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, h) pairs of training items for the sample grids when there are no held-out images: x (n, 3, R, R) in
    [-1, 1], h (n, D)."""
    items = [paired[i * paired.k] for i in grid_rows(paired.cache.labels, min(n, len(paired.cache.indices)))]
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def watched_images(cfg: TrainConfig, paired: PairedDataset, encoder) -> HeldOut | None:
    """What the grids and --eval-every look at, read once: held-out images (embedded by the run's encoder) when
    there are some, else the grid's training items; None if the run neither samples nor scores."""
    if not (cfg.sample_every or cfg.eval_every):
        return None
    spec = resolve_spec(cfg.eval_data, cfg.data)
    if spec:
        return HeldOut.read(spec, cfg.eval_images if cfg.eval_every else 8, encoder, cfg.resolution)
    x, h = grid_inputs(paired)
    return HeldOut(x, h, torch.full((len(h),), -1), torch.arange(len(h)), spec="")


def log_heldout_score(acc, cfg, ema, unet, cache, step, encoder, watch: HeldOut, bar) -> None:
    """Held-out mean rank and top-1 of the EMA weights (main process; the others wait), to the trackers and to
    output_dir/heldout.jsonl."""
    if acc.is_main_process:
        scores = watch.score(ema_pipeline(acc, cfg, ema, unet, cache, encoder), cfg.sample_steps, cfg.seed)
        acc.log(scores, step=step)
        bar.write(f"step {step}: held-out mean rank {scores['heldout_mean_rank']:.2f} "
                  f"(chance {(len(watch.h) + 1) / 2:g}), top-1 {scores['heldout_top1_pct']:.1f}%")
        with open(Path(cfg.output_dir) / "heldout.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "num_images": len(watch.h), **scores}) + "\n")
    acc.wait_for_everyone()


def log_samples(acc, cfg, ema, unet, cache, step, encoder, watch: HeldOut, n_inputs=8, n_samples=5) -> None:
    """Grid of (input, samples) rows for the watched images (read once per run), as PNG and in the trackers."""
    if acc.is_main_process:
        pipe = ema_pipeline(acc, cfg, ema, unet, cache, encoder)
        x, h = watch.grid(n_inputs)
        run = Sampling(num_samples=n_samples, num_inference_steps=cfg.sample_steps, seed=cfg.seed)
        samples = to_pil(sample(pipe, h, run=run))  # (n * K) images, input-major
        inputs = to_pil((x + 1) / 2)
        sheet = image_grid([[inputs[i]] + samples[i * n_samples:(i + 1) * n_samples] for i in range(len(x))])
        path = Path(cfg.output_dir) / "samples" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path)
        for tracker in acc.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("samples", np.asarray(sheet), step, dataformats="HWC")
            elif tracker.name == "wandb":
                tracker.log_images({"samples": [sheet]}, step=step)
    acc.wait_for_everyone()
