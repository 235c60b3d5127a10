"""Several RCDMs on the same images with the same noise: `compare` (any models side by side) and `layers`
(Guillotine Regularization, Bordes et al. 2023: one RCDM per layer of one encoder, rows = layers)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from ..images import to_pil
from ..metrics import diversity, rank_stats
from ..sampling import sample
from .common import (AnalysisResult, at_resolution, blank_tile, chunks, default_run, embed, encoder_view, fmt,
                     labelled_grid, run_record)


@dataclass
class ModelSamples:
    """One model's view of the shared inputs: inputs (N, 3, R, R) and samples (N*K, 3, R, R) in [0, 1]."""

    inputs: torch.Tensor
    samples: torch.Tensor
    numbers: dict


def sample_models(pipes: Mapping, images, run) -> dict[str, ModelSamples]:
    """Sample every model on the same images with the same noise (sample k of image i is seeded by (seed, i, k)
    for every model). Each model is scored in its own encoder's space: `rank` = rcdm.metrics.rank_stats of its
    samples among the N given images, `diversity` = rcdm.metrics.diversity of its K samples per image."""
    out = {}
    for name, pipe in pipes.items():
        x = encoder_view(images, pipe.encoder)  # (N, 3, C, C)
        if len(x) < 2:
            raise ValueError("ranking samples among the given images needs at least 2 images")
        h = embed(pipe.encoder, x)
        samples = sample(pipe, h, range(len(x)), run)  # (N*K, 3, R, R)
        h_hat = embed(pipe.encoder, samples)
        out[name] = ModelSamples(at_resolution(x, pipe.resolution), samples, {
            "encoder": pipe.encoder.config(), "resolution": pipe.resolution,
            "rank": rank_stats(h, h_hat), "diversity": diversity(samples, h_hat, run.num_samples)})
    return out


def compare(pipes: Mapping, images, run=None) -> AnalysisResult:
    """Two or more models (name -> pipe) on the same images, side by side, with each model's rank among the
    given images and its diversity (see `sample_models`). Default sampling: 4 samples per image."""
    if len(pipes) < 2:
        raise ValueError(f"compare needs at least 2 models, got {len(pipes)}")
    run = default_run(run, 4)
    res = sample_models(pipes, images, run)
    numbers = {"num_images": len(next(iter(res.values())).inputs), "sampling": run_record(run, pipes),
               "models": {name: m.numbers for name, m in res.items()}}
    rows, labels = [], []
    size = max(m.inputs.shape[-1] for m in res.values())
    per_model = {name: (to_pil(at_resolution(m.inputs, size)), chunks(to_pil(at_resolution(m.samples, size)),
                                                                        run.num_samples))
                 for name, m in res.items()}
    for i in range(numbers["num_images"]):
        for name, (inputs, samples) in per_model.items():
            rows.append([inputs[i]] + samples[i])
            labels.append(f"image {i}\n{name}")
    title = "input | samples, same noise for every model\n" + "\n".join(
        f"{name}: {_summary(m.numbers)}" for name, m in res.items())
    return AnalysisResult("compare", numbers, labelled_grid(rows, labels, title))


def layers(pipes: Mapping, images, run=None) -> AnalysisResult:
    """RCDMs trained on successive layers of one encoder (name -> pipe, in layer order): one grid with a row per
    layer (the first row shows the inputs) and a table of rank and diversity per layer (see `sample_models`).
    Default sampling: 2 samples per image."""
    run = default_run(run, 2)
    res = sample_models(pipes, images, run)
    specs = {m.numbers["encoder"]["spec"] for m in res.values()}
    table = [{"layer": name, "encoder_layer": m.numbers["encoder"]["layer"], "dim": m.numbers["encoder"]["dim"],
              "mean_rank": m.numbers["rank"]["mean"], "top1_pct": m.numbers["rank"]["top1_pct"],
              "pixel_rms": m.numbers["diversity"]["pixel_rms"],
              "feature_cosine": m.numbers["diversity"]["feature_cosine"]} for name, m in res.items()]
    numbers = {"num_images": len(next(iter(res.values())).inputs), "sampling": run_record(run, pipes),
               "same_encoder": len(specs) == 1, "table": table, "models": {name: m.numbers for name, m in res.items()}}
    return AnalysisResult("layers", numbers, _layers_figure(res, run.num_samples))


def _layers_figure(res: dict[str, ModelSamples], k: int):
    size = max(m.inputs.shape[-1] for m in res.values())
    first = next(iter(res.values()))
    rows = [[t for inp in to_pil(at_resolution(first.inputs, size)) for t in [inp] + [blank_tile(size)] * (k - 1)]]
    labels = ["inputs"]
    for name, m in res.items():
        rows.append(to_pil(at_resolution(m.samples, size)))
        labels.append(f"{name}\n{_summary(m.numbers, short=True)}")
    return labelled_grid(rows, labels, f"rows = layers, {k} samples per input, same noise in every row")


def _summary(n: dict, short: bool = False) -> str:
    r, d = n["rank"], n["diversity"]
    if short:
        return f"rank {r['mean']:.2f}, div {fmt(d['pixel_rms'])}"
    return (f"mean rank {r['mean']:.2f} (chance {r['chance_mean']:.1f}), top-1 {r['top1_pct']:.0f}%, "
            f"pixel diversity {fmt(d['pixel_rms'])}, feature diversity {fmt(d['feature_cosine'])}")
