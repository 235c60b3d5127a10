"""Sample spread: many samples from one h, and where in the image they disagree (Bordes et al. 2022, Sec. 4)."""
from __future__ import annotations

from ..images import to_pil
from ..metrics import diversity
from ..sampling import sample
from .common import (AnalysisResult, at_resolution, chunks, default_run, embed, encoder_view, groups, heat_tile,
                     labelled_grid, run_record)


def spread(pipe, images, run=None) -> AnalysisResult:
    """K samples per image and the per-pixel standard deviation among them.

    The std is taken over the K samples of one image at every pixel and channel (Bessel-corrected, pixel values in
    [0, 1]); the heat map shows its mean over the channels. What the representation keeps is dark (all samples
    agree), what it discards is bright. Numbers: `mean_pixel_std` (over images, pixels and channels), the same per
    image, and `rcdm.metrics.diversity` (pairwise pixel RMS and encoder-feature cosine distance) of the samples.
    Default sampling: 8 samples per image (`rcdm.evaluate.Sampling`)."""
    run = default_run(run, 8)
    k = run.num_samples
    if k < 2:
        raise ValueError("the spread of samples needs at least 2 samples per image")
    x = encoder_view(images, pipe.encoder)  # (N, 3, C, C)
    samples = sample(pipe, embed(pipe.encoder, x), range(len(x)), run)  # (N*K, 3, R, R)
    std = groups(samples, k).std(dim=1)  # (N, 3, R, R)
    numbers = {"num_images": len(x), "sampling": run_record(run, pipe), "mean_pixel_std": std.mean().item(),
               "per_image_pixel_std": std.mean(dim=(1, 2, 3)).tolist(),
               "diversity": diversity(samples, embed(pipe.encoder, samples), k)}
    return AnalysisResult("spread", numbers, _figure(x, samples, std.mean(1), k, pipe.resolution, numbers))


def _figure(x, samples, std_map, k, r, numbers):
    vmax = std_map.max().item()
    rows = [[inp] + s + [heat_tile(m, vmax)]
            for inp, s, m in zip(to_pil(at_resolution(x, r)), chunks(to_pil(samples), k), std_map)]
    labels = [f"image {i}\nstd {v:.3f}" for i, v in enumerate(numbers["per_image_pixel_std"])]
    d = numbers["diversity"]
    title = (f"input | {k} samples | per-pixel std (black 0, yellow {vmax:.3f})\nmean pixel std "
             f"{numbers['mean_pixel_std']:.4f}, pixel RMS diversity {d['pixel_rms']:.4f}, "
             f"feature cosine diversity {d['feature_cosine']:.4f}")
    return labelled_grid(rows, labels, title)
