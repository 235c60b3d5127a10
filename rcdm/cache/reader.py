"""Reading an embedding cache (`EmbeddingCache`): the rows, views and metadata of a finished `rcdm embed` file,
mapped from disk, and the checks that it belongs to the data and encoder at hand. `builder` writes one."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..data import fingerprint, open_dataset
from ..embed_store import open_tensors
from ..encoders.frozen import random_init_error
from ..encoders.identity import check_encoder_weights
from ..fsutil import atomic_file

VIEWS = ("identity", "hflip")
PENDING, DONE, UNREADABLE = 0, 1, 2  # per-item status in a partial file
STORE_KEY, META_KEY = "rcdm_store", "rcdm"  # metadata: what the rows are (checked on resume); the finished cache's
HEADER_RESERVE = 1 << 16  # spare header bytes for the final metadata (counts, a few unreadable-image messages)


def apply_view(x: torch.Tensor, view: int) -> torch.Tensor:
    """(..., H, W) image in view `view` (index into VIEWS)."""
    return x.flip(-1) if VIEWS[view] == "hflip" else x


@dataclass
class EmbeddingCache:
    """embeddings (N, K, D) for dataset items `indices` (N,), with `labels` (N,) and metadata. `load` maps them
    from the file: rows are read when touched."""

    embeddings: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor
    meta: dict
    files: list[str] | None = None  # a folder's file list or a shard index (`listing_of`): no rescan when training
    stats: tuple[torch.Tensor, torch.Tensor] | None = None  # per-dimension mean, std (D,) of all rows and views

    @classmethod
    def load(cls, path) -> "EmbeddingCache":
        if not Path(path).is_file():
            raise FileNotFoundError(f"embedding cache {path} not found; create it with `rcdm embed`.")
        t, metadata = open_tensors(path)
        if META_KEY not in metadata:
            raise ValueError(f"{path} is an unfinished `rcdm embed` output; run the same command again to finish it.")
        meta = json.loads(metadata[META_KEY])
        n = meta["num_rows"] if "status" in t else len(t["indices"])  # rows past n: unreadable items' slots
        files = bytes(t["files"].numpy()).decode().split("\n") if "files" in t else None
        stats = (t["embedding_mean"], t["embedding_std"]) if "embedding_mean" in t else None
        return cls(t["embeddings"][:n], t["indices"][:n], t["labels"][:n], meta, files, stats)

    def save(self, path) -> None:
        tensors = {"embeddings": self.embeddings.contiguous(), "indices": self.indices, "labels": self.labels}
        if self.files:  # newline-joined UTF-8 (no newline in a file name is supported), ~50 MB for ImageNet
            tensors["files"] = torch.frombuffer(bytearray("\n".join(self.files).encode()), dtype=torch.uint8)
        if self.stats is not None:
            tensors.update(embedding_mean=self.stats[0].contiguous(), embedding_std=self.stats[1].contiguous())
        with atomic_file(path) as tmp:  # a crash never leaves a truncated cache under the real name
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(self.meta)})

    def open_data(self, spec: str):
        """The dataset `spec` names; an image folder or tar shards are rebuilt from the stored listing instead of
        rescanned (every rank at every start). The fingerprint check still compares it with the files on disk."""
        return open_dataset(spec, listing=self.files)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[-1]

    def embedding_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 per-dimension mean and std (D,) over every row and view: stored by `rcdm embed` (no full read of
        the file), else computed as training always did."""
        if self.stats is not None:
            return self.stats[0].float(), self.stats[1].float()
        flat = self.embeddings.flatten(0, 1).float()  # (N * K, D)
        return flat.mean(0), flat.std(0)

    def check_matches(self, ds, encoder_spec: str | None = None, layer: str | None = None) -> None:
        """Refuse a cache made from other data or another encoder/layer, naming what differs."""
        problems = []
        if self.meta["fingerprint"] != fingerprint(ds):
            problems.append(f"dataset fingerprint {self.meta['fingerprint']} != {fingerprint(ds)} "
                            f"(cache was made from '{self.meta['data']}')")
        enc = self.meta["encoder"]
        if encoder_spec is not None and encoder_spec != enc["spec"]:
            problems.append(f"encoder '{enc['spec']}' != requested '{encoder_spec}'")
        if layer is not None and layer != enc["layer"]:
            problems.append(f"layer '{enc['layer']}' != requested '{layer}'")
        if problems:
            raise ValueError("embedding cache does not match: " + "; ".join(problems) + ". Re-run `rcdm embed`.")

    def check_encoder(self, encoder, where: str = "embedding cache") -> None:
        """Refuse an encoder whose weights are not the ones that made these embeddings: same spec, other network
        (a random init rebuilt, a weights file replaced). Caches made before fingerprints existed are not checked."""
        if encoder.random_init:
            raise ValueError(random_init_error(encoder.spec))
        check_encoder_weights(encoder, self.meta["encoder"], where, made="cache")
