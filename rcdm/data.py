"""Image sources: packed-JPEG npz files, ImageFolder directories, WebDataset tar shards and torchvision datasets,
given by path.

Every source is map-style and yields (uint8 tensor (3, H, W), label). Unreadable images are reported, never silently
replaced.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
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


# ---------------------------------------------------------------- WebDataset tar shards
# Not the `webdataset` package: its datasets are iterable (a stream of tar members), while training and the embedding
# cache need item i on demand (cache row r <-> item indices[r]). An uncompressed tar member's header gives the offset
# of its data, so one header scan indexes every sample and each read is a seek. The layout rules are WebDataset's
# (`tariterators.py`): members named `__*__` are metadata, a sample is the run of consecutive members sharing a key
# (the name up to the first dot of its basename), extensions are compared in lower case. Specs are expanded with
# `braceexpand`, WebDataset's own dependency, and `::` joins patterns as in WebDataset.
WDS_META = re.compile(r"__[^/]*__($|/)")
WDS_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset's base_plus_ext: (key, extension)
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")


def expand_shards(spec) -> list[Path]:
    """`wds:` spec (brace pattern(s) joined by `::`, a directory of .tar files, one .tar) or a list -> shard paths."""
    from braceexpand import braceexpand

    if not isinstance(spec, (str, Path)):
        return [Path(s) for s in spec]
    spec = str(spec).removeprefix("wds:")
    if Path(spec).is_dir():
        return sorted(Path(spec).glob("*.tar"))
    return [Path(s) for part in spec.split("::") for s in braceexpand(part)]


def _tar_samples(tar: tarfile.TarFile, name: str):
    """(key, {extension: TarInfo}) for each WebDataset sample of an open tar, in tar order, from headers alone."""
    key, group = None, {}
    while (m := tar.next()) is not None:
        tar.members = []  # a single tar of 1.28M members would otherwise keep every header in memory
        kx = WDS_KEY.match(m.name) if m.isreg() and not WDS_META.match(m.name) else None
        if kx is None:
            continue
        k, ext = kx.group(1), kx.group(2).lower()
        if k != key:
            if group:
                yield key, group
            key, group = k, {}
        if ext in group:
            raise ValueError(f"{name}: sample '{k}' has two '.{ext}' members.")
        group[ext] = m
    if group:
        yield key, group


def _check_end(tar: tarfile.TarFile, name: str) -> None:
    """tarfile stops quietly at a corrupt or truncated header; a complete tar ends in zero blocks instead."""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.strip(b"\0"):
        raise ValueError(f"{name}: truncated or corrupt tar after byte {tar.offset}; the samples after it would be "
                         "lost. Rewrite the shard.")


def _label(tar: tarfile.TarFile, group: dict, where: str) -> int | None:
    """The class id in KEY.cls (text), else KEY.json's "label" or "cls"; None when the sample has neither."""
    if "cls" in group:
        value = tar.extractfile(group["cls"]).read().decode(errors="replace")
    elif "json" in group:
        try:
            meta = json.loads(tar.extractfile(group["json"]).read())
        except ValueError as e:
            raise ValueError(f"{where}.json is not valid JSON ({e}).") from e
        value = meta.get("label", meta.get("cls")) if isinstance(meta, dict) else None
    else:
        return None
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label {value!r} is not an integer class id.") from None


def index_shard(path: Path) -> list[tuple]:
    """(key, image offset, image size, label or None) for each sample of one uncompressed tar shard."""
    rows = []
    try:
        with tarfile.open(path, "r:") as tar:
            for key, group in _tar_samples(tar, path.name):
                where = f"{path.name}: sample '{key}'"
                images = [ext for ext in group if ext in WDS_IMAGE_EXTS]
                if len(images) != 1:
                    raise ValueError(f"{where} has {len(images)} images among its members "
                                     f"({', '.join(sorted(group))}); expected one of .{', .'.join(WDS_IMAGE_EXTS)}.")
                m = group[images[0]]
                rows.append((key, m.offset_data, m.size, _label(tar, group, where)))
            _check_end(tar, path.name)
    except tarfile.TarError as e:
        raise ValueError(f"{path}: not a readable uncompressed tar ({e}): truncated, corrupt or compressed (shards "
                         "must be plain .tar, a compressed one cannot be read at random).") from e
    return rows


def _resolve_labels(labels: list, keys: list, shards: list, shard_of: list) -> np.ndarray:
    """All labels, or -1 everywhere for an unlabelled dataset (as NpzImages and flat folders); a partly labelled
    dataset is an error: a class-conditional run would silently learn from a wrong class -1."""
    missing = [i for i, y in enumerate(labels) if y is None]
    if missing and len(missing) < len(labels):
        i = missing[0]
        raise ValueError(f"{shards[shard_of[i]].name}: sample '{keys[i]}' has no label (.cls, or \"label\"/\"cls\" in "
                         f".json) while {len(labels) - len(missing)} of {len(labels)} samples have one.")
    return np.array([-1 if y is None else y for y in labels], dtype=np.int64)


@dataclass
class TarShardImages(torch.utils.data.Dataset):
    """WebDataset tar shards (`KEY.jpg` + `KEY.cls`, optionally `KEY.json`), read at random by item index.

    Items are the shards in spec order (a directory: sorted), samples in tar order. The index (offset and size of
    each image, label) comes from one scan of the tar headers; `index_lines()` returns it as text, and passing that
    back as `listing` (e.g. from an embedding cache) skips the scan on every other rank and run."""

    spec: object  # `wds:` spec string (see `expand_shards`) or a list of shard paths
    listing: tuple = ()  # a previous `index_lines()` of the same shards
    _handles: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False, compare=False)
    _pid: int = field(default=-1, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.shards = expand_shards(self.spec)
        self._check_shards()
        rows = self._from_listing() if self.listing else self._scan()
        shard_of, keys, offsets, sizes, labels = zip(*rows)
        self.shard_of = np.array(shard_of, dtype=np.int32)
        self.keys = np.array([k.encode() for k in keys])  # fixed-width bytes: one buffer, not 1.28M str objects
        self.offsets, self.sizes = np.array(offsets, dtype=np.int64), np.array(sizes, dtype=np.int64)
        self.labels = _resolve_labels(list(labels), keys, self.shards, shard_of)
        self.classes = []  # shards carry class ids only

    def _check_shards(self):
        if not self.shards:
            raise ValueError(f"data '{self.spec}': no .tar shards found.")
        missing = [s for s in self.shards if not s.is_file()]
        if missing:
            raise ValueError(f"data '{self.spec}': {len(missing)} of {len(self.shards)} shards not found, "
                             f"first: {missing[0]}.")
        names = [s.name for s in self.shards]
        if len(set(names)) < len(names):  # the index names shards by file name
            raise ValueError(f"data '{self.spec}': two shards share a file name.")

    def _scan(self):
        rows = [(j, *row) for j, s in enumerate(self.shards) for row in index_shard(s)]
        if not rows:
            raise ValueError(f"data '{self.spec}': the shards hold no samples.")
        return rows

    def _from_listing(self):
        pos = {s.name: j for j, s in enumerate(self.shards)}
        rows = []
        for line in self.listing:
            shard, off, size, label, key = line.split("\t", 4)
            if shard not in pos:
                raise ValueError(f"the stored listing names shard {shard}, which '{self.spec}' does not hold: it "
                                 "was made from other data.")
            rows.append((pos[shard], key, int(off), int(size), int(label)))
        return rows

    def index_lines(self) -> list[str]:
        """The index as text lines, `shard\\toffset\\tsize\\tlabel\\tkey` (~65 bytes a sample for ImageNet, ~80 MB): what
        a cache stores. A key with a newline cannot be stored (the cache joins lines with newlines)."""
        return [f"{self.shards[j].name}\t{o}\t{n}\t{y}\t{k.decode()}"
                for j, o, n, y, k in zip(self.shard_of, self.offsets, self.sizes, self.labels, self.keys)]

    def __len__(self):
        return len(self.offsets)

    def name(self, i) -> str:
        """`SHARD.tar:KEY`: how errors name item i."""
        return f"{self.shards[self.shard_of[i]].name}:{self.keys[i].decode()}"

    def raw(self, i) -> bytes:
        data = _read_at(self._file(int(self.shard_of[i])), int(self.offsets[i]), int(self.sizes[i]))
        if len(data) != self.sizes[i]:
            raise ImageError(f"{self.name(i)}: shard ends inside the image ({len(data)} of {self.sizes[i]} bytes).")
        return data

    def identity(self, i):
        shard = self.shards[self.shard_of[i]]
        return f"{self.name(i)}:{shard.stat().st_size}:".encode() + self.raw(i)

    def __getitem__(self, i):
        return pil_to_uint8(open_image(self.raw(i), name=self.name(i))), int(self.labels[i])

    def _file(self, j: int):
        """This process's open handle on shard j: opened lazily, never inherited from the parent of a DataLoader
        worker, at most `_max_open_files()` kept (least recently used closed first)."""
        if self._pid != os.getpid():
            self._handles, self._pid = OrderedDict(), os.getpid()  # a forked worker: the parent's stay the parent's
        if j in self._handles:
            self._handles.move_to_end(j)
        else:
            if len(self._handles) >= _max_open_files():
                self._handles.popitem(last=False)[1].close()
            self._handles[j] = open(self.shards[j], "rb", buffering=0)  # noqa: SIM115 (kept open); one exact pread a read
        return self._handles[j]

    def close(self):
        for f in self._handles.values():
            f.close()
        self._handles.clear()

    def __getstate__(self):  # pickled for spawn-started workers: handles are per process
        return {**self.__dict__, "_handles": OrderedDict(), "_pid": -1}


def _read_at(f, offset: int, size: int) -> bytes:
    """`os.pread` where it exists: no file position to share with anyone; else seek + read."""
    if hasattr(os, "pread"):
        return os.pread(f.fileno(), size, offset)
    f.seek(offset)
    return f.read(size)


def _max_open_files() -> int:
    """Shard handles kept open per process: a quarter of the descriptor limit, the rest stays for DataLoader pipes
    and shared-memory tensors."""
    try:
        import resource
    except ImportError:  # Windows
        return 128
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1024 if soft == resource.RLIM_INFINITY else max(8, soft // 4)


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

