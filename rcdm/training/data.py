"""The denoiser's training data: (image view, embedding) pairs from an `rcdm embed` cache, how one optimizer step's
images split over processes, micro-batches and accumulation, and the endless resumable batch stream."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..cache import EmbeddingCache, apply_view
from ..images import resize_center_crop
from ..train_config import TrainConfig


class PairedDataset(torch.utils.data.Dataset):
    """Item j = (image i in view v, f(view_v(x_i))) with i = j // K, v = j % K: every view is its own item,
    so no randomness lives in __getitem__ and resume is exact. With `preload`, every image is decoded once here."""

    def __init__(self, ds, cache: EmbeddingCache, resolution: int, preload: bool = False):
        self.ds, self.cache, self.resolution = ds, cache, resolution
        self.k = cache.embeddings.shape[1]
        self.images = self._decode_all() if preload else None  # uint8 (N, 3, R, R), row i = cache row i

    def __len__(self):
        return len(self.cache.indices) * self.k

    def __getitem__(self, j):
        i, v = divmod(j, self.k)
        x = self.images[i] if self.images is not None else self.image(i)
        x = apply_view(x, v)  # uint8 (3, R, R)
        return x.float().div(127.5).sub(1), self.cache.embeddings[i, v].float()  # [-1, 1], (D,)

    def image(self, i: int) -> torch.Tensor:
        """Cache row i's image at the training resolution, uint8 (3, R, R)."""
        return resize_center_crop(self.ds[int(self.cache.indices[i])][0], self.resolution)

    def _decode_all(self) -> torch.Tensor:
        rows = range(len(self.cache.indices))
        return torch.stack([self.image(i) for i in tqdm(rows, desc="preloading images", mininterval=5)])


def make_dataloader(cfg: TrainConfig, cache: EmbeddingCache, pin_memory: bool = False):
    """The shuffled pairs of the cache's data (refused if the data is not what the cache was made from)."""
    ds = cache.open_data(cfg.data)
    cache.check_matches(ds)
    paired = PairedDataset(ds, cache, cfg.resolution, preload=cfg.preload_images)
    if len(paired) < cfg.batch_size:
        raise ValueError(f"{len(paired)} training items is fewer than one batch of {cfg.batch_size}")
    return torch.utils.data.DataLoader(paired, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                       num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                                       pin_memory=pin_memory)


def endless_batches(dl, skip: int, acc):
    """Endless batches, starting `skip` batches into the seeded epoch order (exact resume)."""
    epoch, skip = divmod(skip, len(dl))
    while True:
        dl.set_epoch(epoch)
        it = acc.skip_first_batches(dl, skip) if skip else dl
        skip = 0
        yield from it
        epoch += 1


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's images are split: global batch = processes x per-device batch x accumulation."""

    num_processes: int
    per_device: int
    grad_accum: int

    @property
    def global_batch(self) -> int:
        return self.num_processes * self.per_device * self.grad_accum

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = {self.num_processes} process(es) x {self.per_device} per device "
                f"x {self.grad_accum} accumulation step(s)")


def plan_batch(global_batch: int, num_processes: int, max_per_device: int) -> BatchPlan:
    """The fewest accumulation steps whose per-device micro-batch is at most `max_per_device` and splits the global
    batch exactly: DDP averages gradients over equal micro-batches, so every process must see the same count."""
    if global_batch < 1 or max_per_device < 1:
        raise ValueError(f"--global-batch-size ({global_batch}) and --batch-size ({max_per_device}) must be positive")
    if global_batch % num_processes:
        raise ValueError(f"--global-batch-size {global_batch} does not split over {num_processes} processes; use a "
                         f"multiple of {num_processes}, or another number of processes")
    per_process = global_batch // num_processes
    accum = next(a for a in range(math.ceil(per_process / max_per_device), per_process + 1) if per_process % a == 0)
    return BatchPlan(num_processes, per_process // accum, accum)


def apply_global_batch(cfg: TrainConfig, num_processes: int) -> tuple[TrainConfig, BatchPlan]:
    """The config with --batch-size / --grad-accum derived from --global-batch-size (unchanged when it is 0)."""
    if not cfg.global_batch_size:
        return cfg, BatchPlan(num_processes, cfg.batch_size, cfg.grad_accum)
    if cfg.grad_accum != 1:
        raise ValueError(f"--grad-accum {cfg.grad_accum} and --global-batch-size {cfg.global_batch_size} both set the "
                         "accumulation; leave --grad-accum at 1 (it is derived), or set --global-batch-size 0")
    plan = plan_batch(cfg.global_batch_size, num_processes, cfg.batch_size)
    return dataclasses.replace(cfg, batch_size=plan.per_device, grad_accum=plan.grad_accum), plan
