"""Augmentation invariance (Bordes et al. 2022, Sec. 4.3): condition on f(t(x)) and see whether t shows.

For each augmentation t, a statistic s(img) measures how much of t an image shows. With x the input as the
encoder sees it (rcdm.analysis.common.encoder_view) and everything measured at the model's resolution R:

    score(t) = clip( (s̄(samples | f(t x)) - s̄(samples | f(x))) / (s̄(t x) - s̄(x)), 0, 1 )

s̄ is the mean of s over the N images (and over their K samples). Both sample sets use the same noise (sample k of
image i is seeded by (seed, i, k) in either condition), so only the conditioning differs. 1 = the samples move
as far as t x is from x (the representation keeps t), 0 = they do not move at all (it discards t). The ratio is
taken of means over all images, not per image, so that images for which t changes little (a symmetric image
under a flip) cannot blow it up; it is None if |s̄(t x) - s̄(x)| < 1e-6.

The augmentations and their statistics (corr = Pearson correlation over all 3 R² pixel values, 0 for a constant
image):

- flip: horizontal flip. s(img) = corr(img, flip x) - corr(img, x).
- crop: the centre crop of side `crop_frac` (default 0.5) rescaled to full size (bilinear). s(img) =
  corr(img, t x) - corr(img, x).
- hue: colour jitter of the hue alone, a rotation by `hue_turns` (default 0.25) of the colour circle
  (rcdm.augment.hue_shift, a rotation of the YIQ chroma plane), clipped to [0, 1]. s(img) = the circular hue shift
  of img relative to x in turns: arg(sum_p c_img(p) conj(c_x(p))) / 2 pi with c = I + iQ the YIQ chroma at
  pixel p (a chroma-weighted circular mean of the per-pixel hue differences), in (-1/2, 1/2].
- grayscale: rcdm.augment.grayscale (BT.601 luma). s(img) = mean HSV saturation (max - min) / max over the pixels
  (0 where max = 0).
- rotation: rotation by `rotation_deg` (default 90) degrees about the centre, corners filled by reflection.
  s(img) = corr(img, t x) - corr(img, x).
- blur: Gaussian blur with sigma = `blur_sigma` (default 0.04) x the image side (1.3 px at 32 px), kernel
  2 ceil(3 sigma) + 1. s(img) = high-frequency energy ratio: the share of the power spectrum of the mean-removed
  luma above 1/4 cycle per pixel (radially), 0 for a constant image.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Mapping

import numpy as np
import torch

from ..augment import RGB2YIQ, AugmentParams, augment, grayscale  # re-exported: rcdm.analysis names them
from ..images import to_pil
from ..sampling import sample
from ..viz import image_grid
from ..choices import AUGMENTATIONS
from .common import AnalysisResult, at_resolution, default_run, embed, encoder_view, run_record

HF_CUTOFF = 0.25  # cycles per pixel: half the Nyquist frequency


# ------------------------------------------------------------------------------------------------ statistics
def statistic(name: str, img: torch.Tensor, x: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    """s(img) for augmentation `name` (module docstring): img, x, tx (M, 3, R, R) row-aligned -> float64 (M,)."""
    if name in ("flip", "crop", "rotation"):
        return _corr(img, tx) - _corr(img, x)
    if name == "hue":
        return hue_offset(img, x)
    if name == "grayscale":
        return saturation(img)
    if name == "blur":
        return high_freq_ratio(img)
    raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTATIONS)}")


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row pair over all values: (M, ...) x 2 -> (M,); 0 if either is constant."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def saturation(img: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation (max - min) / max over the pixels: (M, 3, R, R) -> (M,)."""
    mx, mn = img.double().amax(1), img.double().amin(1)  # (M, R, R)
    return ((mx - mn) / mx.clamp_min(1e-12)).mean(dim=(1, 2))


def hue_offset(img: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Chroma-weighted circular mean hue difference of img relative to x, in turns: (M, 3, R, R) x 2 -> (M,)."""
    z = (_chroma(img) * _chroma(x).conj()).sum(dim=(1, 2))  # (M,) complex
    return z.angle() / (2 * math.pi)


def _chroma(img: torch.Tensor) -> torch.Tensor:
    yiq = torch.einsum("ij,bjhw->bihw", RGB2YIQ.double(), img.double())  # (M, 3, R, R)
    return torch.complex(yiq[:, 1], yiq[:, 2])  # (M, R, R): I + iQ


def high_freq_ratio(img: torch.Tensor, cutoff: float = HF_CUTOFF) -> torch.Tensor:
    """Share of the luma power spectrum (mean removed) above `cutoff` cycles per pixel: (M, 3, R, R) -> (M,)."""
    g = grayscale(img.double())[:, 0]  # (M, R, R)
    power = torch.fft.fft2(g - g.mean(dim=(1, 2), keepdim=True)).abs().square()  # (M, R, R)
    fy, fx = torch.fft.fftfreq(g.shape[1], dtype=g.dtype), torch.fft.fftfreq(g.shape[2], dtype=g.dtype)
    high = (fy[:, None].square() + fx[None, :].square()).sqrt() > cutoff  # (R, R)
    return power[:, high].sum(1) / power.sum(dim=(1, 2)).clamp_min(1e-12)


# ------------------------------------------------------------------------------------------------ analysis
def invariance(pipes, images, augmentations=AUGMENTATIONS, params: AugmentParams = AugmentParams(),
               run=None) -> AnalysisResult:
    """Per model (a pipe, or a name -> pipe mapping) and augmentation, the score of the module docstring (1 = t
    kept, 0 = discarded), with the four means it is made of. Figure: a bar plot of the scores per model, above
    the first image under every t and one sample per model from f(t x). Default sampling: 4 samples per image."""
    pipes = pipes if isinstance(pipes, Mapping) else {"model": pipes}
    run = default_run(run, 4)
    for name in augmentations:
        augment(name, torch.zeros(1, 3, 8, 8), params)  # fail on a bad name before any sampling
    results, examples = {}, {}
    for model, pipe in pipes.items():
        results[model], examples[model] = _one_model(pipe, images, augmentations, params, run)
    numbers = {"augmentations": list(augmentations), "params": asdict(params), "sampling": run_record(run, pipes),
               "models": results}
    return AnalysisResult("invariance", numbers, _figure(results, examples, augmentations))


def _one_model(pipe, images, augmentations, params, run):
    """Scores of one model, plus the first image's row of examples (t x, one sample from f(t x)) for the figure."""
    enc, k, r = pipe.encoder, run.num_samples, pipe.resolution
    x = encoder_view(images, enc)  # (N, 3, C, C)
    n = len(x)
    tx = [augment(a, x, params) for a in augmentations]
    h = embed(enc, torch.cat([x] + tx))  # ((1 + T) N, D): f(x), then f(t x) for every t
    samples = sample(pipe, h, list(range(n)) * (1 + len(tx)), run).view(1 + len(tx), n * k, 3, r, r)
    xr, rep = at_resolution(x, r), (lambda v: v.repeat_interleave(k, 0))
    scores, parts = {}, {}
    for i, (a, t) in enumerate(zip(augmentations, tx)):
        tr = at_resolution(t, r)
        m = {"s_x": statistic(a, xr, xr, tr).mean().item(), "s_tx": statistic(a, tr, xr, tr).mean().item(),
             "s_samples_x": statistic(a, samples[0], rep(xr), rep(tr)).mean().item(),
             "s_samples_tx": statistic(a, samples[i + 1], rep(xr), rep(tr)).mean().item()}
        parts[a] = m
        scores[a] = score(m)
    example = ([xr[0]] + [at_resolution(t[:1], r)[0] for t in tx], [samples[i, 0] for i in range(1 + len(tx))])
    return {"scores": scores, "statistics": parts, "num_images": n}, example


def score(m: dict) -> float | None:
    """score(t) of the module docstring from the four means s_x, s_tx, s_samples_x, s_samples_tx (keys of `m`);
    None when t barely changes the input (|s_tx - s_x| < 1e-6)."""
    denom = m["s_tx"] - m["s_x"]
    if abs(denom) < 1e-6:
        return None
    return min(1.0, max(0.0, (m["s_samples_tx"] - m["s_samples_x"]) / denom))  # max() turns -0.0 into 0.0


def _figure(results: dict, examples: dict, augmentations):
    from matplotlib.figure import Figure  # matplotlib loads when a figure is drawn

    fig = Figure(figsize=(max(6.0, 1.1 * (len(augmentations) + 1)), 4 + 0.8 * (1 + len(results))), dpi=100,
                 layout="constrained")
    ax_bar, ax_img = fig.subplots(2, 1, height_ratios=[3, 0.9 * (1 + len(results))])
    width = 0.8 / len(results)
    pos = np.arange(len(augmentations))
    for j, (model, res) in enumerate(results.items()):
        vals = [np.nan if res["scores"][a] is None else res["scores"][a] for a in augmentations]
        bars = ax_bar.bar(pos + (j - (len(results) - 1) / 2) * width, vals, width, label=model)
        ax_bar.bar_label(bars, labels=["n/a" if np.isnan(v) else f"{v:.2f}" for v in vals], fontsize=7)
    ax_bar.set(xticks=pos, xticklabels=augmentations, ylim=(0, 1.12), ylabel="kept (1) ... discarded (0)",
               title="how much of each augmentation t the samples from f(t x) show")
    ax_bar.legend(fontsize=8)
    first = next(iter(examples.values()))
    rows = [to_pil(torch.stack(first[0]))] + [to_pil(torch.stack(ex[1])) for ex in examples.values()]
    size = max(im.size[0] for row in rows for im in row)
    rows = [[im.resize((size, size)) for im in row] for row in rows]
    ax_img.imshow(image_grid(rows, upscale=max(1, 64 // size)))
    ax_img.set_axis_off()
    ax_img.set_title("columns: none | " + " | ".join(augmentations) + "\nrows: t(x), then one sample from f(t x) "
                     "per model: " + ", ".join(results), fontsize=8)
    return fig
