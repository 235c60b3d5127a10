"""Reference images, encoded: the first readable items of a dataset with their labels, thumbnails at the model's
resolution and embeddings by each encoder asked for, in fixed chunks. What `rcdm evaluate`, the analyses, the
report and training's held-out check compare samples against."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .cache import EmbeddingCache
from .data import check_bad, open_dataset, readable_items
from .encoders.identity import check_encoder_matches
from .images import resize_center_crop, to_pil

ENCODE_CHUNK = 256  # images per encoder call; fixed, so features never depend on `batch_size`


@dataclass
class References:
    """The reference images x, encoded. Row i of every tensor is dataset item `indices[i]`."""

    indices: torch.Tensor        # (N,) positions in the dataset
    labels: torch.Tensor         # (N,) class labels, -1 where the data has none
    thumbs: torch.Tensor | None  # (N, 3, R, R) uint8: x at the model's resolution (Inception FID, figures)
    feats: list[torch.Tensor]    # one float32 (N, D_e) CPU tensor per encoder asked for


def read_references(ds, num_images: int, encoders, resolution: int | None = None, progress: bool = True,
                    offset: int = 0):
    """Encode the first `num_images` readable items of `ds` from position `offset` on with each encoder, in fixed
    chunks. Unreadable items are skipped and counted; more than 1% of them is an error (as in
    `rcdm.data.decode_all`)."""
    bad, idx, labels, thumbs, feats = [], [], [], [], [[] for _ in encoders]
    if offset < 0 or offset >= max(len(ds), 1):  # empty data keeps its own error below
        raise ValueError(f"offset {offset} is outside the data's {len(ds)} items: pick 0 <= offset < {len(ds)}")
    items = readable_items(ds, num_images, bad, offset)
    with tqdm(total=min(num_images, len(ds) - offset), desc="encoding", unit="img", disable=not progress) as bar:
        while chunk := list(itertools.islice(items, ENCODE_CHUNK)):
            pils = [to_pil(x)[0] for _, x, _ in chunk]  # as `pipe(images=...)` sees them
            for out, enc in zip(feats, encoders):
                out.append(enc.encode(pils, batch_size=ENCODE_CHUNK).cpu())
            if resolution is not None:
                thumbs.append(torch.stack([resize_center_crop(x, resolution) for _, x, _ in chunk]))
            idx += [i for i, _, _ in chunk]
            labels += [y for _, _, y in chunk]
            bar.update(len(chunk))
    check_bad(bad, len(idx) + len(bad), max_bad_frac=0.01)
    if not idx:
        raise ValueError("the data holds no readable images")
    return References(torch.tensor(idx), torch.tensor(labels), torch.cat(thumbs) if thumbs else None,
                      [torch.cat(f) for f in feats])


def train_features(train_data: str, judge, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled training embeddings in the judge's space: from an embedding cache (`rcdm embed`, view 0 = the
    image as is), which must come from the judge's encoder and layer, or by encoding a data spec."""
    if train_data.endswith(".safetensors"):
        cache = EmbeddingCache.load(train_data)
        check_encoder_matches(judge, cache.meta["encoder"], train_data, made="cache")
        return cache.embeddings[:, 0].float(), cache.labels
    ds = open_dataset(train_data, "train")
    refs = read_references(ds, len(ds), [judge], progress=progress)
    return refs.feats[0], refs.labels
