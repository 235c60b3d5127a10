"""Déjà vu memorization (Meehan et al. 2023, "Do SSL models have déjà vu?"): from the embedding of a crop that
shows only background, does the foreground object come back? More often for training images than for held-out
ones means the encoder memorised those images, not just their class statistics.

Background crops. CIFAR-10 has no bounding boxes; its objects are centred and fill most of the frame, so the
heuristic is a centre box of side `box_frac` (default 0.5) of the image taken as foreground and everything
outside it as background:
- "frame" (default): the whole image with the centre box filled by the frame's mean colour (per channel);
- "corner": the top-left corner square outside the box (side (1 - box_frac) / 2 of the image, 8 px of 32),
  resized to full size.
With real boxes (ImageNet), pass crops made from them as the images, with `background="none"`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..choices import MEMORIZATION_BACKGROUNDS, MEMORIZATION_MODES
from ..images import to_pil
from ..metrics import class_agreement, knn_predict
from ..sampling import sample
from .common import (AnalysisResult, at_resolution, chunks, default_run, embed, encoder_view, labelled_grid, load_bank,
                     nearest_neighbours, run_record)

BACKGROUNDS, MODES = MEMORIZATION_BACKGROUNDS, MEMORIZATION_MODES
NUM_EXAMPLES = 3  # figure rows per split


def background_crop(x: torch.Tensor, mode: str = "frame", box_frac: float = 0.5) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> (B, 3, S, S): what remains once the centre box is hidden (module docstring)."""
    s = x.shape[-1]
    b = round(s * box_frac)
    o = (s - b) // 2
    if mode == "none":
        return x
    if mode == "frame":
        box = torch.zeros(s, s, dtype=torch.bool, device=x.device)
        box[o:o + b, o:o + b] = True
        fill = x[..., ~box].mean(-1)[..., None, None]  # (B, 3, 1, 1): the frame's mean colour
        return torch.where(box, fill, x)
    if mode == "corner":
        c = max(1, o)
        return F.interpolate(x[..., :c, :c], size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)
    raise ValueError(f"unknown background mode {mode!r}; choose from {', '.join(BACKGROUNDS)}")


def memorization(pipe, train_images, train_labels, test_images, test_labels, bank, k_neighbours: int = 20,
                 background: str = "frame", box_frac: float = 0.5, modes=MODES, knn_k: int = 20,
                 run=None) -> AnalysisResult:
    """Déjà vu on the model's encoder, for images it was trained on (train_*) and held-out ones (test_*).

    `bank`: labelled embeddings of a public set (a (feats, labels) pair, an `rcdm embed` cache file, or a data
    spec), ideally disjoint from both splits. For each image, h_bg = f(background crop), and the model samples
    from, per mode: "patch" = h_bg itself, "knn" = the mean bank embedding of the `k_neighbours` nearest
    neighbours of h_bg (cosine; Déjà vu's reconstruction). The samples are labelled with rcdm.metrics.knn_predict
    on the bank (k = `knn_k`).

    Numbers per split: `patch_knn_accuracy` (the bank kNN label of h_bg itself equals the hidden class: Déjà vu's
    test without a generator), per mode the fraction of samples whose label is the hidden class
    (rcdm.metrics.class_agreement "samples"; "real" there is the kNN accuracy on the full images, the ceiling),
    and `gap` = train - test for each. Chance is 1 / number of classes. Default sampling: 4 samples per image."""
    run = default_run(run, 4)
    feats, labels = load_bank(bank, pipe.encoder)
    if labels is None:
        raise ValueError("memorization needs a labelled bank (the samples' class is predicted from it)")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    splits, figs = {}, []
    for split, images, y in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        splits[split], rows = _split(pipe, images, torch.as_tensor(y), feats, labels, k_neighbours, background,
                                     box_frac, modes, knn_k, run)
        figs += [(f"{split} #{i} (class {int(y[i])})", row) for i, row in enumerate(rows)]
    gap = {key: splits["train"][key] - splits["test"][key] for key in ["patch_knn_accuracy"] + list(modes)}
    numbers = {"sampling": run_record(run, pipe), "background": background, "box_frac": box_frac, "k_neighbours": k_neighbours,
               "knn_k": knn_k, "bank_size": len(feats), "chance": 1 / int(labels.max() + 1), **splits,
               "gap": gap}
    title = (f"background '{background}' (centre box {box_frac:.0%} hidden); rows: image | background | samples "
             f"per mode ({', '.join(modes)})\n" + ", ".join(
                 f"{m}: train {splits['train'][m]:.2f} vs test {splits['test'][m]:.2f}"
                 for m in ["patch_knn_accuracy"] + list(modes)))
    return AnalysisResult("memorization", numbers, labelled_grid([r for _, r in figs], [n for n, _ in figs], title))


def _split(pipe, images, y, feats, labels, k_neighbours, background, box_frac, modes, knn_k, run):
    """Numbers for one split, and figure rows for its first NUM_EXAMPLES images."""
    enc, k = pipe.encoder, run.num_samples
    x = encoder_view(images, enc)  # (N, 3, C, C)
    bg = background_crop(x, background, box_frac)
    h_bg = embed(enc, bg)  # (N, D)
    h_full = embed(enc, x)
    out = {"num_images": len(x),
           "patch_knn_accuracy": (knn_predict(feats, labels, h_bg, knn_k) == y).double().mean().item()}
    cond = {"patch": h_bg, "knn": torch.stack([feats[nearest_neighbours(h, feats, k_neighbours, False)].mean(0)
                                               for h in h_bg])}
    samples = {}
    for m in modes:
        samples[m] = sample(pipe, cond[m], range(len(x)), run)  # (N*K, 3, R, R)
        agree = class_agreement(feats, labels, h_full, embed(enc, samples[m]), y, knn_k)
        out[m], out["full_image_knn_accuracy"] = agree["samples"], agree["real"]
    r = pipe.resolution
    per_mode = [chunks(to_pil(samples[m]), k) for m in modes]
    rows = [[a, b] + [s for pm in per_mode for s in pm[i]]
            for i, (a, b) in enumerate(zip(to_pil(at_resolution(x[:NUM_EXAMPLES], r)),
                                           to_pil(at_resolution(bg[:NUM_EXAMPLES], r))))]
    return out, rows
