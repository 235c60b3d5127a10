"""The held-out images a training run watches: its sample grids, and an optional periodic rank/top-1 score.

Both are read once, when the run starts, on the main process: no encoder reload and no folder rescan at every grid.
The items are spread evenly over the held-out data (item round(j * (n_items - 1) / (n - 1)) for j < n), so a
class-sorted image folder still gives one image from n different places in its class order, and the grid is the
same at every step of a run and across resumes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import open_dataset
from .metrics import rank_stats
from .references import read_references
from .sampling import Sampling, sample


def resolve_spec(eval_data: str, data: str) -> str:
    """The held-out data spec: `eval_data` as given; "auto" means the test split of a training .npz that has one
    (CIFAR-10's packed file), otherwise none; "" or "none" turns held-out images off."""
    if eval_data in ("", "none"):
        return ""
    if eval_data != "auto":
        return eval_data
    path = data.removesuffix(".npz").partition(".npz:")[0] + ".npz" if ".npz" in data else ""  # drop a :split
    if path and Path(path).is_file():
        with np.load(path) as z:
            if "test_jpeg" in z.files:
                return path + ":test"
    return ""


def spread_indices(num_items: int, n: int) -> list[int]:
    """n positions spread evenly over range(num_items), first and last included (all of them if n >= num_items)."""
    if n >= num_items:
        return list(range(num_items))
    return np.linspace(0, num_items - 1, n).round().astype(int).tolist()


@dataclass
class HeldOut:
    """n held-out images: `x` (n, 3, R, R) in [-1, 1] at the UNet's resolution, their embeddings `h` (n, D) by
    the run's encoder, `labels` (n,) and `keys` (n,), their positions in the held-out data (the noise keys, as in
    `rcdm evaluate`)."""

    x: torch.Tensor
    h: torch.Tensor
    labels: torch.Tensor
    keys: torch.Tensor
    spec: str

    @classmethod
    def read(cls, spec: str, n: int, encoder, resolution: int) -> "HeldOut":
        ds = open_dataset(spec, "test")
        positions = spread_indices(len(ds), n)
        refs = read_references(torch.utils.data.Subset(ds, positions), len(positions), [encoder], resolution,
                               progress=False)
        keys = torch.tensor(positions)[refs.indices]  # Subset positions -> held-out data positions
        return cls(refs.thumbs.float().div(127.5).sub(1), refs.feats[0], refs.labels, keys, spec)

    def grid(self, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, h) rows of every sample grid: n of the held-out images, spread over them."""
        rows = spread_indices(len(self.h), n)
        return self.x[rows], self.h[rows]

    def score(self, pipe, steps: int, seed: int) -> dict:
        """One sample per held-out embedding with the model's recorded sampler at `steps`, re-encoded by the
        pipeline's encoder: rank of the source among the n held-out embeddings (chance (n + 1) / 2) and top-1 %."""
        x_hat = sample(pipe, self.h, keys=self.keys.tolist(), run=Sampling(num_inference_steps=steps, seed=seed))
        stats = rank_stats(self.h, pipe.encoder.encode(x_hat))
        return {"heldout_mean_rank": stats["mean"], "heldout_top1_pct": stats["top1_pct"]}
