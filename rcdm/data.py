"""Image sources: packed-JPEG npz files, ImageFolder directories and torchvision datasets, given by path.

Every source yields (uint8 tensor (3, H, W), label). Unreadable images are reported, never silently replaced.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import pil_to_uint8, resize_center_crop

# Pillow's decompression-bomb guard stays on: a huge upload raises instead of eating all memory.
Image.MAX_IMAGE_PIXELS = 64_000_000
MAX_SIDE = 4096  # images larger than this are downsized before anything else touches them


class ImageError(ValueError):
    """An input that is not a usable image. The message names the input and the reason."""


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """Any PIL mode (RGBA, LA, P, L, I;16, I, F, CMYK) -> 8-bit RGB, downsized if huge."""
    try:
        img.load()
    except (OSError, SyntaxError) as e:  # truncated or corrupt data surfaces here, not at open()
        raise ImageError(f"{name}: could not decode image data ({e}). Is the file complete?") from e
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grayscale: rescale to 8 bit by the actual range instead of clipping at 255.
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        img = Image.fromarray(a.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # composite on white, not on black
        img = Image.alpha_composite(bg, rgba)
    img = img.convert("RGB")
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
    return img


def open_image(src, name: str | None = None) -> Image.Image:
    """Open a path, bytes or PIL image as RGB, with a clear `ImageError` on anything unusable."""
    if isinstance(src, Image.Image):
        return to_rgb(src, name or "image")
    name = name or (str(src) if not isinstance(src, (bytes, bytearray)) else "image bytes")
    if not isinstance(src, (bytes, bytearray)) and not Path(src).is_file():
        raise ImageError(f"{name}: no such file.")
    try:
        img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image is too large ({e}).") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: not a readable image file ({type(e).__name__}: {e}).") from e
    return to_rgb(img, name)


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


def open_dataset(spec: str, split: str = "train"):
    """Resolve a data spec: `PATH.npz`, a directory, or `torchvision:NAME:ROOT`. A `:split` suffix picks a split."""
    if spec.startswith("torchvision:"):
        parts = spec.split(":")
        return TorchvisionImages(parts[1], parts[2], parts[3] if len(parts) > 3 else split)
    path, _, sfx = spec.partition(".npz:")
    if sfx:
        return NpzImages(path + ".npz", sfx)
    if spec.endswith(".npz"):
        return NpzImages(spec, split)
    if Path(spec).is_dir():
        return FolderImages(spec)
    raise ValueError(
        f"data '{spec}' not found or not understood: expected a .npz file (optionally 'file.npz:test'), "
        "an image folder, or 'torchvision:NAME:ROOT'."
    )


def fingerprint(ds) -> str:
    """A cheap identity for a dataset: its length plus a hash of 64 items spread over it (bytes for npz,
    relative path and size for folders)."""
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


def readable_items(ds, n: int, bad: list):
    """(index, uint8 (3, H, W), label) for the first n items of `ds` that decode; the others go to `bad`."""
    found = 0
    for i in range(len(ds)):
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

