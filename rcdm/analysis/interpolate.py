"""Interpolation between two images' embeddings over the whole path t = 0 ... 1, the same noise at every point
(the reference only covered t = 0.5 to 0.7)."""
from __future__ import annotations

import torch

from ..images import to_pil
from ..sampling import sample
from .common import (AnalysisResult, at_resolution, chunks, cosine, default_run, embed, encoder_view, labelled_grid,
                     run_record)

MODES = ("lerp", "slerp")


def interpolate_embeddings(h0: torch.Tensor, h1: torch.Tensor, n: int, mode: str = "lerp") -> torch.Tensor:
    """(D,), (D,) -> (n, D): n points from h0 to h1 at t = linspace(0, 1, n), endpoints included.

    "lerp" is the chord (1 - t) h0 + t h1. "slerp" follows the great circle between the directions of h0 and h1
    and interpolates the norms linearly, so every point has norm (1 - t)|h0| + t|h1| (the chord's midpoint is
    shorter than both ends)."""
    t = torch.linspace(0, 1, n, device=h0.device, dtype=h0.dtype)[:, None]  # (n, 1)
    if mode == "lerp":
        return (1 - t) * h0 + t * h1
    if mode != "slerp":
        raise ValueError(f"mode must be 'lerp' or 'slerp', got {mode!r}")
    n0, n1 = h0.norm(), h1.norm()
    u0, u1 = h0 / n0.clamp_min(1e-12), h1 / n1.clamp_min(1e-12)
    omega = torch.arccos((u0 @ u1).clamp(-1, 1))
    if omega < 1e-4:  # (nearly) parallel: the great circle degenerates to the chord
        return (1 - t) * h0 + t * h1
    u = (torch.sin((1 - t) * omega) * u0 + torch.sin(t * omega) * u1) / torch.sin(omega)  # (n, D) unit vectors
    return u * ((1 - t) * n0 + t * n1)


def interpolate(pipe, image_a, image_b, num_points: int = 8, modes=MODES, run=None) -> AnalysisResult:
    """Samples along the path from f(a) to f(b) for each mode, with the same noise at every point and in every
    mode (sample k at every point is seeded by (seed, 0, k)), so only the embedding changes along a row.

    Numbers per mode and point: the norm of the interpolated embedding, and the mean cosine of the samples'
    embeddings to f(a) and to f(b). Default sampling: 1 sample per point."""
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2 (the two endpoints), got {num_points}")
    run = default_run(run, 1)
    k = run.num_samples
    x = encoder_view([image_a, image_b], pipe.encoder)  # (2, 3, C, C)
    h = embed(pipe.encoder, x)  # (2, D)
    numbers = {"sampling": run_record(run, pipe), "t": torch.linspace(0, 1, num_points).tolist(),
               "cos_a_b": cosine(h[0], h[1]).item()}
    ends = to_pil(at_resolution(x, pipe.resolution))
    rows, labels = [], []
    for mode in modes:
        path = interpolate_embeddings(h[0], h[1], num_points, mode)  # (n, D)
        samples = sample(pipe, path, [0] * num_points, run)  # (n*K, 3, R, R), point-major
        h_hat = embed(pipe.encoder, samples).view(num_points, k, -1)  # (n, K, D)
        numbers[mode] = {"norm": path.norm(dim=1).tolist(),
                         "cos_samples_to_a": cosine(h_hat, h[0]).mean(1).tolist(),
                         "cos_samples_to_b": cosine(h_hat, h[1]).mean(1).tolist()}
        per_point = chunks(to_pil(samples), k)  # n lists of K
        for j in range(k):
            rows.append([ends[0]] + [p[j] for p in per_point] + [ends[1]])
            labels.append(mode if k == 1 else f"{mode} #{j}")
    title = (f"A | t = 0 ... 1 in {num_points} points | B (same noise at every point); "
             f"cos(f(A), f(B)) = {numbers['cos_a_b']:.3f}")
    return AnalysisResult("interpolate", numbers, labelled_grid(rows, labels, title))
