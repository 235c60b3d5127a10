"""WebDataset tar shards as a map-style source (`TarShardImages`): item i on demand, by one header scan per shard."""
from __future__ import annotations

import json
import os
import re
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..images import pil_to_uint8
from .decode import ImageError, open_image

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
