"""The image sources a spec names (`open_dataset`): packed-JPEG npz files, ImageFolder directories, WebDataset
shards (`webdataset`) and torchvision datasets, with their listings and fingerprints, and the readers that skip and
count unreadable images."""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..images import pil_to_uint8, resize_center_crop
from .decode import ImageError, open_image, to_rgb
from .webdataset import TarShardImages


# ---------------------------------------------------------------- packed-JPEG npz (see shared/data/README.md)
@dataclass
class NpzImages(torch.utils.data.Dataset):
    """The packed-JPEG npz format: `<split>_jpeg` bytes, `<split>_offsets`, `<split>_labels`."""

    path: str
    split: str = "train"

    def __post_init__(self):
        z = np.load(self.path)
        keys = {f"{self.split}_jpeg", f"{self.split}_offsets"}
        if not keys <= set(z.files):
            raise ValueError(
                f"{self.path}: no split '{self.split}' (has keys {sorted(z.files)}); "
                "expected '<split>_jpeg' and '<split>_offsets'."
            )
        self.buf = z[f"{self.split}_jpeg"]
        self.offsets = z[f"{self.split}_offsets"]
        lab = f"{self.split}_labels"
        self.labels = z[lab] if lab in z.files else np.full(len(self.offsets) - 1, -1)
        self.classes = list(z["class_names"]) if "class_names" in z.files else []

    def __len__(self):
        return len(self.offsets) - 1

    def raw(self, i):
        return self.buf[self.offsets[i] : self.offsets[i + 1]].tobytes()

    identity = raw

    def __getitem__(self, i):
        img = open_image(self.raw(i), name=f"{self.path}[{self.split}][{i}]")
        return pil_to_uint8(img), int(self.labels[i])


@dataclass
class FolderImages(torch.utils.data.Dataset):
    """An ImageFolder tree (`root/<class>/<image>`); also accepts a flat folder of images (label -1).

    `listing` (paths relative to the root, e.g. an embedding cache's) replaces the directory scan, which costs
    minutes for ImageNet's 1.28M files on a network filesystem."""

    path: str
    extensions: tuple = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
    listing: tuple = ()

    def __post_init__(self):
        root = Path(self.path)
        files = ([root / f for f in self.listing] if self.listing else
                 sorted(p for p in root.rglob("*") if p.suffix.lower() in self.extensions))
        if not files:
            raise ValueError(f"{self.path}: no images found (looked for {', '.join(self.extensions)}).")
        self.classes = sorted({p.parent.name for p in files if p.parent != root})
        idx = {c: i for i, c in enumerate(self.classes)}
        self.files = files
        self.labels = np.array([idx.get(p.parent.name, -1) if p.parent != root else -1 for p in files])

    def __len__(self):
        return len(self.files)

    def identity(self, i):
        p = self.files[i]
        size = p.stat().st_size if p.is_file() else "missing"  # a listed file deleted since: another dataset
        return f"{p.relative_to(self.path)}:{size}".encode()

    def relative_files(self) -> list[str]:
        """The file list, relative to the root (POSIX separators): what a cache stores to skip the next scan."""
        return [p.relative_to(self.path).as_posix() for p in self.files]

    def __getitem__(self, i):
        return pil_to_uint8(open_image(self.files[i])), int(self.labels[i])


def _is_shard_dir(path) -> bool:
    """A directory of .tar files with no subdirectories and no images (those make it an image folder)."""
    if not Path(path).is_dir():
        return False
    with os.scandir(path) as it:
        entries = list(it)
    return (any(e.name.endswith(".tar") for e in entries) and not any(e.is_dir() for e in entries)
            and not any(e.name.lower().endswith(FolderImages.extensions) for e in entries))


@dataclass
class TorchvisionImages(torch.utils.data.Dataset):
    """`torchvision:NAME:ROOT[:split]`, e.g. `torchvision:CIFAR10:/data/cifar:test`. Never downloads."""

    name: str
    root: str
    split: str = "train"

    def __post_init__(self):
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.name, None)
        if cls is None:
            raise ValueError(f"torchvision.datasets has no dataset '{self.name}'.")
        kw = {"train": self.split == "train"} if self.name in ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST") else {
            "split": self.split}
        try:
            self.ds = cls(self.root, download=False, **kw)
        except RuntimeError as e:
            raise ValueError(f"torchvision {self.name} not found under {self.root} ({e}); rcdm never downloads.") from e
        self.labels = np.array(getattr(self.ds, "targets", getattr(self.ds, "labels", [-1] * len(self.ds))))
        self.classes = list(getattr(self.ds, "classes", []))

    def __len__(self):
        return len(self.ds)

    def identity(self, i):
        return f"{self.name}:{self.split}:{i}:{self.labels[i]}".encode()

    def __getitem__(self, i):
        img, label = self.ds[i]
        return pil_to_uint8(to_rgb(img, f"{self.name}[{i}]")), int(label)


def open_dataset(spec: str, split: str = "train", listing=None):
    """Resolve a data spec: `PATH.npz`, an image folder, WebDataset shards (`wds:PATTERN`, `PATTERN.tar`, a directory
    of .tar files) or `torchvision:NAME:ROOT`. A `:split` suffix picks an npz split. `listing` (what `listing_of`
    gave for the same spec) replaces the folder scan or the shard index."""
    if spec.startswith("torchvision:"):
        parts = spec.split(":")
        return TorchvisionImages(parts[1], parts[2], parts[3] if len(parts) > 3 else split)
    if spec.startswith("wds:") or spec.endswith(".tar") or _is_shard_dir(spec):
        return TarShardImages(spec, listing=tuple(listing or ()))
    path, _, sfx = spec.partition(".npz:")
    if sfx:
        return NpzImages(path + ".npz", sfx)
    if spec.endswith(".npz"):
        return NpzImages(spec, split)
    if Path(spec).is_dir():
        return FolderImages(spec, listing=tuple(listing or ()))
    raise ValueError(
        f"data '{spec}' not found or not understood: expected a .npz file (optionally 'file.npz:test'), "
        "an image folder, WebDataset tar shards ('wds:/data/train-{000000..000146}.tar', a .tar file or a folder "
        "of them) or 'torchvision:NAME:ROOT'."
    )


def listing_of(ds) -> list[str] | None:
    """What an embedding cache stores so that `open_dataset(spec, listing=...)` skips the scan: a folder's file list
    or a shard index; None for sources that need none."""
    if isinstance(ds, FolderImages):
        return ds.relative_files()
    if isinstance(ds, TarShardImages):
        return ds.index_lines()
    return None


def fingerprint(ds) -> str:
    """A cheap identity for a dataset: its length plus a hash of 64 items spread over it (bytes for npz,
    relative path and size for folders, shard name and size, key and bytes for tar shards)."""
    h = hashlib.sha256(f"{type(ds).__name__}:{len(ds)}".encode())
    step = max(1, len(ds) // 64)
    for i in range(0, len(ds), step):
        h.update(ds.identity(i))
    return h.hexdigest()[:16]


def decode_all(ds, desc: str = "decoding", resolution: int | None = None, max_bad_frac: float = 0.01):
    """Decode a whole dataset into memory: uint8 (N, 3, R, R), labels (N,), and the indices that were kept.

    Unreadable images are skipped and counted; more than `max_bad_frac` of them is an error.
    """
    from tqdm.auto import tqdm

    imgs, labels, kept, bad = [], [], [], []
    for i in tqdm(range(len(ds)), desc=desc, mininterval=2, leave=False):
        try:
            x, y = ds[i]
        except ImageError as e:
            bad.append((i, str(e)))
            continue
        if resolution is not None:
            x = resize_center_crop(x, resolution)
        imgs.append(x), labels.append(y), kept.append(i)
    check_bad(bad, len(ds), max_bad_frac)
    return torch.stack(imgs), torch.tensor(labels), torch.tensor(kept), len(bad)


def readable_items(ds, n: int, bad: list, offset: int = 0):
    """(index, uint8 (3, H, W), label) for the first n items of `ds` from position `offset` on that decode; the
    others go to `bad`."""
    found = 0
    for i in range(offset, len(ds)):
        if found == n:
            return
        try:
            x, y = ds[i]
        except ImageError as e:
            bad.append((i, str(e)))
            continue
        found += 1
        yield i, x, y


def check_bad(bad, total, max_bad_frac):
    if bad:
        warnings.warn(f"skipped {len(bad)} of {total} unreadable images; first: {bad[0][1]}")
    if len(bad) > max_bad_frac * total:
        raise ValueError(
            f"{len(bad)} of {total} images are unreadable (> {max_bad_frac:.0%}); first: {bad[0][1]}. "
            "Fix or remove them."
        )
