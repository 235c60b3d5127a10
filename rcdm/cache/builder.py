"""Building an embedding cache (`build_cache`, the `rcdm embed` command's work): every readable image of a dataset
in each view, encoded, sharded over the processes of an `accelerate launch`, committed chunk by chunk and resumed
after a kill. `rcdm.cache` describes the file."""
from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..data import ImageError, check_bad, fingerprint, listing_of, open_dataset
from ..embed_store import SAFETENSORS, RowFile, create
from ..encoders.frozen import random_init_error
from ..fsutil import OutputLocked, output_lock
from .reader import DONE, HEADER_RESERVE, META_KEY, PENDING, STORE_KEY, UNREADABLE, VIEWS, EmbeddingCache, apply_view


# ---------------------------------------------------------------------------------------------------- building
@dataclass
class EmbedOptions:
    """How `rcdm embed` runs. Only dtype, bf16 and matched_view change the numbers."""

    batch_size: int = 256            # images per encoder call
    num_workers: int | None = None   # DataLoader decoding processes per rank; None: min(8, CPUs per local rank)
    dtype: str = "float32"           # stored precision: float32, or float16 (half the disk and page cache)
    bf16: bool = False               # bf16 autocast for the encoder
    matched_view: bool = False       # the encoder sees the UNet's full short-side centre crop (RCDM's reference)
    chunk_size: int = 4096           # rows committed at once: the most a kill costs each rank
    max_bad_frac: float = 0.01       # more unreadable images than this is an error
    progress: bool = True            # a progress bar on the main process


class _Preprocessed(torch.utils.data.Dataset):
    """Dataset items resized/cropped the way the encoder expects (uint8), or None for unreadable images."""

    def __init__(self, ds, pre):
        self.ds, self.pre = ds, pre

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            x, y = self.ds[i]
        except ImageError:  # counted by its status; the reason is read again for the few the metadata quotes
            return i, None, None
        return i, self.pre.apply(x), y  # Preprocess: resize + crop (or squash), uint8 kept


def _collate(items):
    """(good rows, uint8 images, labels, unreadable rows); the first three are None when no image decoded."""
    good = [it for it in items if it[1] is not None]
    bad = [it[0] for it in items if it[1] is None]
    if not good:
        return None, None, None, bad
    idx, xs, ys = zip(*good)
    return torch.tensor(idx), torch.stack(xs), torch.tensor(ys), bad


class _ChunkBatches(torch.utils.data.Sampler):
    """Batches of the rows this rank still has to do. Chunk c (rows c*S .. c*S+S-1) belongs to rank c % world, and a
    batch never spans two chunks, so a chunk is committed as soon as the batch after its last one arrives."""

    def __init__(self, todo: np.ndarray, opts: EmbedOptions, rank: int, world: int):
        self.todo, self.size, self.batch, self.rank, self.world = todo, opts.chunk_size, opts.batch_size, rank, world

    def chunks(self):
        for lo in range(self.rank * self.size, len(self.todo), self.world * self.size):
            rows = np.flatnonzero(self.todo[lo:lo + self.size]) + lo
            if len(rows):
                yield rows

    def __iter__(self):
        for rows in self.chunks():
            for i in range(0, len(rows), self.batch):
                yield rows[i:i + self.batch].tolist()

    def __len__(self):
        return sum(-(-len(rows) // self.batch) for rows in self.chunks())


class _Committer:
    """Marks rows done or unreadable one chunk at a time, after fdatasync of their rows: resume trusts the status,
    so it never vouches for rows that a crash could still lose."""

    def __init__(self, store: RowFile, status: np.ndarray, chunk_size: int):
        self.store, self.status, self.size, self.open = store, status, chunk_size, None

    def add(self, good: np.ndarray, bad: list[int]) -> None:
        chunk = int((good[0] if len(good) else bad[0]) // self.size)
        if chunk != self.open:
            self.commit()
            self.open = chunk
        self.status[good], self.status[bad] = DONE, UNREADABLE

    def commit(self) -> None:
        if self.open is None:
            return
        lo = self.open * self.size
        self.store.sync()
        self.store.write("status", lo, self.status[lo:lo + self.size])
        self.open = None


def build_cache(encoder, data: str, out=None, **options) -> EmbeddingCache | None:
    """Encode every readable image of `data` in each of VIEWS into the cache file `out` (EmbedOptions: `options`),
    sharded over the processes of an `accelerate launch` and resumed from `out`.partial if one is there. Returns the
    finished cache (memory-mapped) on the main process, None on the others; without `out`, the cache is built in a
    temporary file and returned in memory. Unreadable images are skipped and counted. A random-init encoder is
    refused: no pipeline could ever rebuild the network these embeddings come from."""
    opts = EmbedOptions(**options)
    if encoder.random_init:
        raise ValueError(random_init_error(encoder.spec))
    if opts.matched_view:
        encoder = copy.copy(encoder)  # a shallow copy: same network, its own preprocessing
        encoder.preprocess = encoder.preprocess.matched()
    if out is not None:
        with _one_writer(Path(out)):  # before the dataset is opened and fingerprinted: a second run stops at once
            return embed_dataset(encoder, open_dataset(data), data, Path(out), opts)
    ds = open_dataset(data)
    with tempfile.TemporaryDirectory() as d:
        cache = embed_dataset(encoder, ds, data, Path(d) / "cache.safetensors", opts)
        return replace(cache, embeddings=cache.embeddings.clone(), indices=cache.indices.clone(),
                       labels=cache.labels.clone(), stats=tuple(s.clone() for s in cache.stats))


def embed_dataset(encoder, ds, data: str, out: Path, opts: EmbedOptions) -> EmbeddingCache | None:
    """`build_cache` on an opened dataset `ds` (`data` is its spec, for the record). Every process calls it."""
    from accelerate import PartialState

    state, t0 = PartialState(), time.time()
    partial = Path(str(out) + ".partial")
    identity = _identity(encoder, ds, data, opts)
    if state.is_main_process and not partial.is_file():
        _create_partial(partial, ds, encoder.dim, identity)
    state.wait_for_everyone()
    with RowFile(partial) as store:
        _check_resumable(store, identity, partial)
        _embed_rows(encoder, ds, store, state, opts)
    state.wait_for_everyone()
    return _finish(partial, out, ds, identity, opts, t0) if state.is_main_process else None


@contextmanager
def _one_writer(out: Path):
    """One run (all the processes of one launch) writes `out` at a time: the main process holds `out`.lock, and
    every process learns whether it got it, so that all of a refused launch stop with the holder's name."""
    from accelerate import PartialState

    state = PartialState()
    with ExitStack() as stack:
        refused = None
        if state.is_main_process:
            try:
                stack.enter_context(output_lock(out))
            except OutputLocked as e:
                refused = str(e)
        if state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            refused = broadcast_object_list([refused])[0]
        if refused:
            raise OutputLocked(refused)
        yield


def _identity(encoder, ds, data: str, opts: EmbedOptions) -> dict:
    """What the rows of a cache are: a partial file is resumed only if these agree (the data spec aside)."""
    return {"encoder": encoder.config(), "data": data, "fingerprint": fingerprint(ds), "num_items": len(ds),
            "views": list(VIEWS), "dtype": opts.dtype, "autocast": "bfloat16" if opts.bf16 else None,
            "matched_view": opts.matched_view}


def _create_partial(path: Path, ds, dim: int, identity: dict) -> None:
    n, k = len(ds), len(VIEWS)
    listing = "\n".join(listing_of(ds) or []).encode()
    dtype = SAFETENSORS[np.dtype(identity["dtype"])]
    tensors = {"embedding_mean": ("F64", (dim,)), "embedding_std": ("F64", (dim,)), "indices": ("I64", (n,)),
               "labels": ("I64", (n,)), "embeddings": (dtype, (n, k, dim)), "status": ("U8", (n,))}
    if listing:  # a folder's file list or a shard index: training rebuilds the dataset from it without a rescan
        tensors["files"] = ("U8", (len(listing),))
    create(path, tensors, {STORE_KEY: json.dumps(identity)}, HEADER_RESERVE, {"files": listing} if listing else {})


def _check_resumable(store: RowFile, identity: dict, partial: Path) -> None:
    made = _resume_key(json.loads(store.metadata[STORE_KEY]))
    now = _resume_key(identity)
    if made != now:
        diff = [f"{k}: {made.get(k)!r} != now {now[k]!r}" for k in now if made.get(k) != now[k]]
        raise ValueError(f"{partial} was started with other settings ({'; '.join(diff)}). Delete it to start over, "
                         "or re-run with the settings it was made with.")


def _resume_key(identity: dict) -> dict:
    """The identity, flat, without the spellings of the data and encoder specs (a relative path, say): the data
    and the weights are checked by their fingerprints."""
    rest = {k: v for k, v in identity.items() if k not in ("data", "encoder")}
    return {**rest, **{f"encoder {k}": v for k, v in identity["encoder"].items() if k != "spec"}}


def _embed_rows(encoder, ds, store: RowFile, state, opts: EmbedOptions) -> None:
    """This rank's pending rows (not yet done; unreadable ones are retried): encoded, written, committed per chunk."""
    from tqdm.auto import tqdm

    status = store.read("status", 0, store.rows("status")).copy()
    batches = _ChunkBatches(status != DONE, opts, state.process_index, state.num_processes)
    device = encoder.device
    dl = torch.utils.data.DataLoader(_Preprocessed(ds, encoder.preprocess), batch_sampler=batches,
                                     num_workers=_num_workers(opts), collate_fn=_collate,
                                     pin_memory=device.type == "cuda")
    if state.is_main_process and (status == DONE).any():
        print(f"resuming {store.path}: {int((status == DONE).sum())} of {len(status)} images already embedded")
    commits = _Committer(store, status, opts.chunk_size)
    bar = tqdm(total=int(sum(len(r) for r in batches.chunks())), desc="embedding", unit="img",
               disable=not (opts.progress and state.is_main_process))
    for idx, x, y, bad in dl:
        good = idx.numpy() if idx is not None else np.zeros(0, np.int64)
        if len(good):
            store.write_runs("embeddings", good, _encode_views(encoder, x, opts))
            store.write_runs("labels", good, y.numpy())
        commits.add(good, bad)
        bar.update(len(good) + len(bad))
    commits.commit()
    bar.close()


def _encode_views(encoder, x: torch.Tensor, opts: EmbedOptions) -> np.ndarray:
    """uint8 (B, 3, crop, crop) -> (B, K, D) in the stored dtype. The images travel as uint8 (4x less than float)
    and are scaled to [0, 1] and normalised on the encoder's device."""
    x = x.to(encoder.device, non_blocking=True)
    autocast = torch.bfloat16 if opts.bf16 else None
    views = [encoder.encode(apply_view(x, v), batch_size=opts.batch_size, autocast_dtype=autocast)
             for v in range(len(VIEWS))]
    return torch.stack(views, dim=1).to(getattr(torch, opts.dtype)).cpu().numpy()


def _num_workers(opts: EmbedOptions) -> int:
    """Decoding processes per rank: as asked, else up to 8, sharing the CPUs with the other ranks on this machine."""
    if opts.num_workers is not None:
        return opts.num_workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _finish(partial: Path, out: Path, ds, identity: dict, opts: EmbedOptions, t0: float) -> EmbeddingCache:
    """Main process, every row settled: count the unreadable, move readable rows into their slots, store the
    statistics and the metadata, rename to `out`. Each step can be redone after a kill."""
    with RowFile(partial) as store:
        status = store.read("status", 0, store.rows("status"))
        if (status == PENDING).any():  # a rank that stopped without an error: never finish on zero rows
            raise ValueError(f"{partial}: {int((status == PENDING).sum())} images were not embedded; run the same "
                             "command again to finish them.")
        bad = np.flatnonzero(status == UNREADABLE)
        _check_unreadable(ds, bad, opts.max_bad_frac, partial)
        num_rows = len(status) - len(bad)
        _fill_unreadable_slots(store, status, num_rows)
        mean, std = streamed_stats(store, num_rows)
        store.write("embedding_mean", 0, mean), store.write("embedding_std", 0, std)
        meta = {**identity, "num_bad": len(bad), "bad_examples": [_why(ds, i)[:500] for i in bad[:5]],
                "seconds": round(time.time() - t0, 1), "num_rows": num_rows}
        store.sync()
        store.set_metadata({STORE_KEY: store.metadata[STORE_KEY], META_KEY: json.dumps(meta)})
        store.sync()
    os.replace(partial, out)
    return EmbeddingCache.load(out)


def _why(ds, i) -> str:
    try:
        ds[int(i)]
    except ImageError as e:
        return str(e)
    return f"item {i} was unreadable while embedding"


def _check_unreadable(ds, bad: np.ndarray, max_bad_frac: float, partial: Path) -> None:
    messages = [(int(i), _why(ds, i) if j == 0 else "") for j, i in enumerate(bad)]  # check_bad quotes the first
    try:
        check_bad(messages, len(ds), max_bad_frac)
    except ValueError as e:
        raise ValueError(f"{e} The embeddings made so far stay in {partial}: the same command retries only the "
                         "unreadable images.") from None


def _fill_unreadable_slots(store: RowFile, status: np.ndarray, num_rows: int) -> None:
    """Make rows 0 .. num_rows - 1 the usable ones: each unreadable item's row among them gets a copy of a readable
    row after them, and `indices` maps rows to items. The rows copied from are never written, so a kill midway
    and a second pass give the same file."""
    slots = np.flatnonzero(status[:num_rows] == UNREADABLE)
    movers = np.flatnonzero(status[num_rows:] == DONE) + num_rows
    for dst, src in zip(slots, movers):
        for name in ("embeddings", "labels"):
            store.write(name, int(dst), store.read(name, int(src), int(src) + 1))
    step = 1 << 20
    for lo in range(0, len(status), step):
        rows = np.arange(lo, min(lo + step, len(status)))
        at = (slots >= lo) & (slots < lo + step)
        rows[slots[at] - lo] = movers[at]
        store.write("indices", lo, rows)


def streamed_stats(store: RowFile, num_rows: int, values_per_read: int = 1 << 21) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and unbiased std of rows 0 .. num_rows - 1 of the embeddings (all views), in float64,
    combining blocks with Chan et al.'s pairwise update ("Updating formulae and a pairwise algorithm for computing
    sample variances", 1979): within 1e-6 of torch's float32 mean/std of the whole tensor, one block in memory."""
    e = store.entries["embeddings"]
    dim, step = e.shape[-1], max(1, values_per_read // int(np.prod(e.shape[1:])))
    count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
    for lo in range(0, num_rows, step):
        x = store.read("embeddings", lo, min(num_rows, lo + step)).reshape(-1, dim).astype(np.float64)  # (rows*K, D)
        n, mu = len(x), x.mean(0)
        delta, total = mu - mean, count + n
        m2 += ((x - mu) ** 2).sum(0) + delta ** 2 * count * n / total
        mean, count = mean + delta * n / total, total
    std = np.sqrt(m2 / (count - 1)) if count > 1 else np.full(dim, np.nan)
    return mean, std
