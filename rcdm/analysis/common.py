"""What every analysis shares: images in the encoder's view, seeded sampling, embedding banks, results, figures.

A `pipe` here is an `RCDMPipeline`, or any `rcdm.sampling.Sampler` (the pipeline's sampling call, its
`sampling_defaults` and `dtype`) with an `.encoder` (a `FrozenEncoder`) and a `.resolution`. That is the interface
through which the tests plug in oracles whose "samples" are known exactly.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data import check_bad, open_dataset, readable_items
from ..images import pil_to_uint8, resize_center_crop
from ..references import train_features
from ..sampling import Sampling
from ..viz import image_grid

FORMAT = "rcdm-analysis/1"
PAD = 2  # pixels between grid tiles (rcdm.viz.image_grid)


@dataclass
class AnalysisResult:
    """What every analysis returns: JSON-ready `numbers` and a `figure` (a matplotlib Figure or a PIL image)."""

    kind: str
    numbers: dict
    figure: object

    def save(self, png, json_path=None) -> tuple[Path, Path]:
        """Write the figure as PNG and the numbers as JSON (default: the PNG's path with a .json suffix)."""
        png = Path(png)
        json_path = Path(json_path) if json_path else png.with_suffix(".json")
        if isinstance(self.figure, Image.Image):
            self.figure.save(png)
        else:
            self.figure.savefig(png, dpi=100)
        doc = {"format": FORMAT, "kind": self.kind, **self.numbers}
        json_path.write_text(json.dumps(doc, indent=2, default=_jsonable))
        return png, json_path


def _jsonable(o):
    if hasattr(o, "tolist"):  # tensors and numpy values
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# ------------------------------------------------------------------------------------------------ images
def _to_float(img) -> torch.Tensor:
    """PIL image, uint8 (3, H, W) or float (3, H, W) in [0, 1] -> float (3, H, W) in [0, 1]."""
    if isinstance(img, Image.Image):
        img = pil_to_uint8(img.convert("RGB"))
    return img.float().div(255) if img.dtype == torch.uint8 else img.float()


def encoder_view(images, encoder) -> torch.Tensor:
    """Images (PIL list, list of (3, H, W) tensors, or a (B, 3, H, W) tensor; uint8 or [0, 1] floats) ->
    float (B, 3, C, C) in [0, 1]: resized and centre-cropped exactly as the encoder's preprocessing does it, so
    transforms applied to this tensor are transforms of what the encoder sees."""
    if isinstance(images, Image.Image) or (isinstance(images, torch.Tensor) and images.ndim == 3):
        images = [images]  # one image; a (B, 3, H, W) tensor iterates over its rows
    p = encoder.preprocess
    return torch.cat([p.view(_to_float(im)[None]) for im in images])


def at_resolution(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, 3, S, S) -> (B, 3, r, r), antialiased: encoder-view images next to samples at the model's resolution."""
    return x if x.shape[-1] == r else resize_center_crop(x, r).clamp(0, 1)


def embed(encoder, x01: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> float32 (B, D) on the CPU."""
    return encoder.encode(x01.to(encoder.device)).cpu()


def read_images(data: str, num_images: int, split: str = "test") -> tuple[list[torch.Tensor], torch.Tensor]:
    """The first `num_images` readable items of a data spec (rcdm.data.open_dataset): uint8 tensors, labels."""
    bad = []
    items = list(readable_items(open_dataset(data, split), num_images, bad))  # the reader rcdm.evaluate uses
    images, labels = [x for _, x, _ in items], [y for _, _, y in items]
    check_bad(bad, len(images) + len(bad), max_bad_frac=0.01)
    return images, torch.tensor(labels)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity, broadcasting: (N, D), (N or 1, D) -> (N,)."""
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


# ------------------------------------------------------------------------------------------------ sampling
def default_run(run: Sampling | None, num_samples: int) -> Sampling:
    """The analysis' own sample count when no run is given; every other field: the model's recorded choice."""
    return run if run is not None else Sampling(num_samples=num_samples)


def run_record(run: Sampling, pipes) -> dict:
    """The run as JSON, resolved against the model (or, for several, per model name): what was actually used."""
    if isinstance(pipes, Mapping):
        return {name: asdict(run.resolve(p)) for name, p in pipes.items()}
    return asdict(run.resolve(pipes))


def chunks(items: list, k: int) -> list[list]:
    """An input-major list -> one list of K items per input."""
    return [items[i:i + k] for i in range(0, len(items), k)]


def groups(x: torch.Tensor, k: int) -> torch.Tensor:
    """Input-major (N*K, ...) -> (N, K, ...)."""
    return x.view(-1, k, *x.shape[1:])


# ------------------------------------------------------------------------------------------------ banks
def load_bank(bank, encoder=None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An embedding bank -> (feats (M, D) float32, labels (M,) or None). `bank` is a (M, D) tensor, a
    (feats, labels) pair, an `rcdm embed` cache file (view 0, checked against `encoder`), or a data spec whose
    train split `encoder` embeds (rcdm.evaluate.train_features)."""
    if isinstance(bank, torch.Tensor):
        return bank.float().cpu(), None
    if isinstance(bank, (tuple, list)):
        feats, labels = bank
        return feats.float().cpu(), torch.as_tensor(labels).cpu()
    if encoder is None:
        raise ValueError("loading a bank from a file or data spec needs the encoder it must match")
    feats, labels = train_features(str(bank), encoder, progress)
    return feats.float().cpu(), (labels.cpu() if (labels >= 0).all() else None)


def nearest_neighbours(h: torch.Tensor, bank: torch.Tensor, k: int, exclude_copies: bool = True) -> torch.Tensor:
    """Indices (k,) of the k bank rows most cosine-similar to h (D,). With `exclude_copies`, rows at cosine
    >= 1 - 1e-6 (the query itself, when it is in the bank) are skipped."""
    sim = F.normalize(bank.double(), dim=1) @ F.normalize(h.double(), dim=0)  # (M,)
    if exclude_copies:
        sim = sim.masked_fill(sim >= 1 - 1e-6, -float("inf"))
    if k > int(torch.isfinite(sim).sum()):
        raise ValueError(f"asked for {k} neighbours but the bank has only {int(torch.isfinite(sim).sum())} usable rows")
    return sim.topk(k).indices


# ------------------------------------------------------------------------------------------------ figures
def heat_tile(m: torch.Tensor, vmax: float) -> Image.Image:
    """(R, R) non-negative map -> a PIL heat image (magma colormap, 0 = black, vmax = pale yellow)."""
    from matplotlib import colormaps

    rgba = colormaps["magma"]((m / max(vmax, 1e-12)).clamp(0, 1).numpy())  # (R, R, 4) in [0, 1]
    return Image.fromarray((rgba[..., :3] * 255).round().astype(np.uint8))


def blank_tile(size: int) -> Image.Image:
    return Image.new("RGB", (size, size), (255, 255, 255))


def labelled_grid(rows: list[list[Image.Image]], labels: list[str], title: str = "", upscale: int | None = None):
    """A matplotlib Figure of an image grid (rcdm.viz.image_grid) with a label left of every row."""
    from matplotlib.figure import Figure  # no pyplot: no global state, renders with Agg

    tile = rows[0][0].size[1]
    upscale = upscale or max(1, 96 // tile)
    grid = image_grid(rows, pad=PAD, upscale=upscale)
    w, h = grid.size
    lines = title.split("\n")
    width = max(w / 100 + 2.2, 0.07 * max(len(line) for line in lines) + 0.4)  # about 0.07 in per 9 pt character
    fig = Figure(figsize=(width, h / 100 + 0.4 + 0.16 * len(lines)), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.imshow(grid)
    ax.set_xticks([])
    ax.set_yticks([(PAD + i * (tile + PAD) + tile / 2) * upscale for i in range(len(rows))], labels, fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    return fig


def fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)
