"""The embedding cache: frozen embeddings of every training image, computed once.

The encoder is frozen, so re-encoding every step only burns compute. `rcdm embed` stores, for each usable image i
and each view v (0 = as is, 1 = horizontally flipped), the embedding f(view_v(x_i)). Training pairs the image in
view v with exactly that embedding. The file is safetensors; its metadata records the encoder (spec, layer,
dimension, preprocessing, a fingerprint of its weights), the data spec, a dataset fingerprint and the views, and
training refuses a cache that does not match its data or an encoder whose weights changed.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from .data import ImageError, check_bad, fingerprint, open_dataset
from .images import resize_center_crop

VIEWS = ("identity", "hflip")


def apply_view(x: torch.Tensor, view: int) -> torch.Tensor:
    """(..., H, W) image in view `view` (index into VIEWS)."""
    return x.flip(-1) if VIEWS[view] == "hflip" else x


@dataclass
class EmbeddingCache:
    """embeddings (N, K, D) for dataset items `indices` (N,), with `labels` (N,) and metadata."""

    embeddings: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor
    meta: dict
    files: list[str] | None = None  # an image folder's file list, relative to its root: no rescan when training

    @classmethod
    def load(cls, path) -> "EmbeddingCache":
        if not Path(path).is_file():
            raise FileNotFoundError(f"embedding cache {path} not found; create it with `rcdm embed`.")
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["rcdm"])
        t = load_file(str(path))
        files = bytes(t["files"].numpy()).decode().split("\n") if "files" in t else None
        return cls(t["embeddings"], t["indices"], t["labels"], meta, files)

    def save(self, path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {"embeddings": self.embeddings.contiguous(), "indices": self.indices, "labels": self.labels}
        if self.files:  # newline-joined UTF-8 (no newline in a file name is supported), ~50 MB for ImageNet
            tensors["files"] = torch.frombuffer(bytearray("\n".join(self.files).encode()), dtype=torch.uint8)
        save_file(tensors, str(tmp), metadata={"rcdm": json.dumps(self.meta)})
        tmp.replace(path)  # atomic: a crash never leaves a truncated cache under the real name

    def open_data(self, spec: str):
        """The dataset `spec` names; an image folder is rebuilt from the stored file list instead of rescanned (every
        rank at every start). The fingerprint check still compares it with the files on disk."""
        from .data import FolderImages

        if self.files and Path(spec).is_dir():
            return FolderImages(spec, listing=tuple(self.files))
        return open_dataset(spec)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[-1]

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

    def check_encoder(self, encoder) -> None:
        """Refuse an encoder whose weights are not the ones that made these embeddings: same spec, other network
        (a random init rebuilt, a weights file replaced). Caches made before fingerprints existed are not checked."""
        from .encoders.frozen import random_init_error

        if encoder.random_init:
            raise ValueError(random_init_error(encoder.spec))
        want = self.meta["encoder"].get("fingerprint")
        got = encoder.fingerprint() if want else None
        if want and got != want:
            raise ValueError(f"encoder {encoder.spec!r} has other weights than the ones this cache was made with "
                             f"(fingerprint {got[:12]} != {want[:12]}): the denoiser would condition on another "
                             "network. Restore the original weights, or re-run `rcdm embed`.")


class _Preprocessed(torch.utils.data.Dataset):
    """Dataset items resized/cropped the way the encoder expects, or None for unreadable images."""

    def __init__(self, ds, pre):
        self.ds, self.pre = ds, pre

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            x, y = self.ds[i]
        except ImageError as e:
            return i, None, None, str(e)
        x = resize_center_crop(x, self.pre.size, self.pre.crop)
        return i, x, y, None


def _collate(items):
    good = [it for it in items if it[1] is not None]
    bad = [(it[0], it[3]) for it in items if it[1] is None]
    if not good:
        return None, None, None, bad
    idx, xs, ys, _ = zip(*good)
    return torch.tensor(idx), torch.stack(xs), torch.tensor(ys), bad


def build_cache(encoder, data: str, batch_size: int = 256, num_workers: int = 0, max_bad_frac: float = 0.01,
                progress: bool = True, autocast_dtype=None) -> EmbeddingCache:
    """Encode every readable image of `data` in each of VIEWS. Unreadable images are skipped and counted. A
    random-init encoder is refused: no pipeline could ever rebuild the network these embeddings come from."""
    from tqdm.auto import tqdm

    from .encoders.frozen import random_init_error

    if encoder.random_init:
        raise ValueError(random_init_error(encoder.spec))
    ds = open_dataset(data)
    dl = torch.utils.data.DataLoader(_Preprocessed(ds, encoder.preprocess), batch_size=batch_size,
                                     num_workers=num_workers, collate_fn=_collate)
    embs, indices, labels, bad, t0 = [], [], [], [], time.time()
    for idx, x, y, b in tqdm(dl, desc="embedding", disable=not progress):
        bad += b
        if idx is None:
            continue
        x01 = x.float().div_(255).to(encoder_device(encoder))
        views = [encoder.encode(apply_view(x01, v), batch_size=batch_size, autocast_dtype=autocast_dtype).cpu()
                 for v in range(len(VIEWS))]
        embs.append(torch.stack(views, dim=1)), indices.append(idx), labels.append(y)  # (b, K, D)
    check_bad(bad, len(ds), max_bad_frac)
    meta = {"encoder": encoder.config(), "data": data, "fingerprint": fingerprint(ds), "views": list(VIEWS),
            "num_items": len(ds), "num_bad": len(bad), "bad_examples": [m for _, m in bad[:5]],
            "seconds": round(time.time() - t0, 1)}
    files = ds.relative_files() if hasattr(ds, "relative_files") else None
    return EmbeddingCache(torch.cat(embs), torch.cat(indices), torch.cat(labels), meta, files)


def encoder_device(encoder) -> torch.device:
    return next(encoder.parameters()).device


# ---------------------------------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="precompute frozen embeddings of a dataset (the training cache)",
                       description="Encode every image of a dataset, as is and flipped, with a frozen encoder, "
                                   "and store the embeddings for training.")
    p.add_argument("--encoder", required=True, help="encoder spec, e.g. file:pretrained/simclr-cifar10-r18w32, "
                                                    "dino_resnet50, torchvision:resnet50@weights.pth")
    p.add_argument("--layer", default="backbone", help="backbone, projector, a module name, or a+b (default: backbone)")
    p.add_argument("--data", required=True, help="data: file.npz[:split], an image folder, or torchvision:NAME:ROOT")
    p.add_argument("--out", required=True, help="output cache file (.safetensors)")
    p.add_argument("--batch-size", type=int, default=256, help="images per encoder call (default: 256)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for decoding (default: 0)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast for the encoder (default: off; fp32 embeddings)")
    p.add_argument("--device", default="auto", help="torch device (default: auto)")
    p.set_defaults(func=cmd_embed)


def cmd_embed(args) -> None:
    from .encoders import load_encoder
    from .flags import auto_device

    encoder = load_encoder(args.encoder, args.layer, device=auto_device(args.device))
    cache = build_cache(encoder, args.data, args.batch_size, args.num_workers,
                        autocast_dtype=torch.bfloat16 if args.bf16 else None)
    cache.save(args.out)
    m = cache.meta
    print(f"wrote {args.out}: {len(cache.indices)} images x {len(VIEWS)} views x {cache.dim}-d "
          f"in {m['seconds']} s ({m['num_bad']} unreadable skipped)")
