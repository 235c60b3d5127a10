"""A safetensors file filled in place: preallocated once, written row by row by any number of processes, and read
back memory-mapped.

`rcdm embed` over ImageNet stores 1.28M images x 2 views x 2048-d, 21 GB in float32. Gathering that in RAM and
writing it at the end peaked at 39 GiB and lost everything to a kill. Here the file has its final layout from the
start: the tensors sit at fixed offsets (zero-filled, sparse), and the JSON header is padded with spaces, which the
format allows (https://github.com/huggingface/safetensors#format), so the final metadata later fits in place.
Processes write their rows with `os.pwrite`; a shared writable `mmap` would do the same writes, but its dirty pages
count in the writer's RSS until unmapped, while pwrite leaves them to the page cache.

safetensors itself reads whole tensors into memory (`load_file`) or copies slices (`get_slice`); `open_tensors`
instead maps them copy-on-write, so a reader touches only the rows it uses.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .fsutil import atomic_file

# safetensors dtype -> numpy dtype; BF16 has none and is read as int16, then viewed as torch.bfloat16
NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.int16, "I64": np.int64,
         "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
SAFETENSORS = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
               np.dtype(np.int64): "I64", np.dtype(np.uint8): "U8"}


@dataclass(frozen=True)
class Entry:
    """One tensor of the file: dtype, shape and absolute byte offset."""

    dtype: str
    shape: tuple
    start: int

    @property
    def row_bytes(self) -> int:  # bytes per index of the first axis
        return NUMPY[self.dtype]().itemsize * math.prod(self.shape[1:])


def read_header(path) -> tuple[dict, dict, int]:
    """(tensor entries, the `__metadata__` strings, header length) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None) or {}
    entries = {k: Entry(v["dtype"], tuple(v["shape"]), 8 + n + v["data_offsets"][0]) for k, v in header.items()}
    return entries, meta, n


def open_tensors(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor of a safetensors file, memory-mapped copy-on-write (writes stay private to the process, and
    torch gets the writable array it wants), plus the metadata."""
    entries, meta, _ = read_header(path)
    return {k: _mapped(path, e) for k, e in entries.items()}, meta


def _mapped(path, e: Entry) -> torch.Tensor:
    if math.prod(e.shape) == 0:  # mmap refuses zero bytes
        a = np.zeros(e.shape, NUMPY[e.dtype])
    else:
        a = np.memmap(path, dtype=NUMPY[e.dtype], mode="c", offset=e.start, shape=e.shape)
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if e.dtype == "BF16" else t


def create(path, tensors: dict[str, tuple[str, tuple]], metadata: dict[str, str], reserve: int,
           fill: dict[str, bytes] | None = None) -> None:
    """Preallocate a safetensors file holding zero-filled `tensors` (name -> (dtype, shape), laid out in that order;
    put 8-byte types first to keep every tensor aligned), with `reserve` spare header bytes for later metadata and
    the bytes of `fill` written in. Written beside `path` and renamed: `path` is complete or absent."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = NUMPY[dtype]().itemsize * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = _header_text(header, metadata)
    n = -(-(len(text) + reserve) // 8) * 8  # data stays 8-byte aligned, as safetensors writes it
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", n) + text.ljust(n, b" "))
        f.truncate(8 + n + offset)  # sparse: zeros cost no disk until written
        for name, data in (fill or {}).items():
            f.seek(8 + n + header[name]["data_offsets"][0])
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _header_text(header: dict, metadata: dict) -> bytes:
    return json.dumps({"__metadata__": metadata, **header}, separators=(",", ":")).encode()


class RowFile:
    """Row access (first axis) to the tensors of a file `create` made: pwrite/pread at fixed offsets, so any number
    of processes can fill disjoint rows at once."""

    def __init__(self, path):
        self.path = Path(path)
        self.entries, self.metadata, self._header_len = read_header(path)
        self.fd = os.open(path, os.O_RDWR)

    def rows(self, name: str) -> int:
        return self.entries[name].shape[0]

    def write(self, name: str, row: int, array) -> None:
        """Rows row .. row + len(array) - 1 of tensor `name`."""
        e = self.entries[name]
        a = np.ascontiguousarray(array, dtype=NUMPY[e.dtype])
        if a.shape[1:] != e.shape[1:] or row < 0 or row + len(a) > e.shape[0]:
            raise ValueError(f"{self.path}: rows {row}..{row + len(a)} of shape {a.shape[1:]} do not fit "
                             f"'{name}' {e.shape}")
        view, pos = memoryview(a.reshape(-1).view(np.uint8)), e.start + row * e.row_bytes
        while view:  # pwrite may write less than asked
            done = os.pwrite(self.fd, view, pos)
            view, pos = view[done:], pos + done

    def write_runs(self, name: str, rows: np.ndarray, array) -> None:
        """Rows `rows` (ascending) of tensor `name`: one pwrite per run of consecutive rows."""
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(rows)]):
            self.write(name, int(rows[lo]), array[lo:hi])

    def read(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Rows lo .. hi - 1 of tensor `name`, read into memory (not mapped: the pages stay out of this RSS)."""
        e = self.entries[name]
        size, pos, parts = (hi - lo) * e.row_bytes, e.start + lo * e.row_bytes, []
        while size:  # Linux returns at most ~2 GiB per call
            part = os.pread(self.fd, size, pos)
            if not part:
                raise ValueError(f"{self.path} is truncated: '{name}' rows {lo}..{hi} lie past its end")
            parts.append(part)
            size, pos = size - len(part), pos + len(part)
        data = np.frombuffer(b"".join(parts), dtype=NUMPY[e.dtype])
        return data.reshape(hi - lo, *e.shape[1:])

    def sync(self) -> None:
        """Written rows reach the disk before anything that vouches for them (a status) is written."""
        getattr(os, "fdatasync", os.fsync)(self.fd)  # macOS has no fdatasync

    def set_metadata(self, metadata: dict[str, str]) -> None:
        """Replace the metadata in the reserved header space; the tensors do not move."""
        with open(self.path, "rb") as f:
            f.seek(8)
            header = json.loads(f.read(self._header_len))
        header.pop("__metadata__", None)
        text = _header_text(header, metadata)
        if len(text) > self._header_len:
            raise ValueError(f"{self.path}: metadata of {len(text)} bytes exceeds the {self._header_len} reserved")
        os.pwrite(self.fd, text.ljust(self._header_len, b" "), 8)
        self.metadata = metadata

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
