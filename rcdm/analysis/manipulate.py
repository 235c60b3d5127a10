"""Manipulation by shared dimensions (Bordes et al. 2022, Sec. 5): the dimensions that the source's nearest
neighbours all use carry what they have in common; zero them, or transplant them from another image."""
from __future__ import annotations

import torch

from ..images import to_pil
from ..sampling import sample
from .common import (AnalysisResult, at_resolution, chunks, cosine, default_run, embed, encoder_view, labelled_grid,
                     load_bank, nearest_neighbours, run_record)

CONDITIONS = ("original", "zeroed", "transplanted")


def common_dims(neighbours: torch.Tensor, eps: float = 1e-6, min_frac: float = 0.5) -> torch.Tensor:
    """(k, D) neighbour embeddings -> bool (D,): the dims with |h| > eps in more than `min_frac` of them.
    Backbone features are post-ReLU, so many dims are exactly 0 in any one embedding."""
    return (neighbours.abs() > eps).double().mean(0) > min_frac


def edit_embedding(h: torch.Tensor, mask: torch.Tensor, donor: torch.Tensor | None = None) -> torch.Tensor:
    """h (D,) with the masked dims set to 0 (no donor) or to the donor's values (D,)."""
    return torch.where(mask, torch.zeros_like(h) if donor is None else donor.to(h), h)


def manipulate(pipe, source, target, bank, k: int = 10, eps: float = 1e-6, min_frac: float = 0.5,
               run=None) -> AnalysisResult:
    """The reference's manipulation. Find the k nearest neighbours (cosine) of h = f(source) in `bank` (a (M, D)
    tensor, a (feats, labels) pair, an `rcdm embed` cache file (view 0) or a data spec; exact copies of h are
    skipped), take their common dims (`common_dims`), and sample from three embeddings with the same noise:
    h ("original"), h with the common dims zeroed ("zeroed"), and h with the common dims taken from
    f(target) ("transplanted").

    Numbers: the common dims, and per condition the cosine of the conditioning embedding and of the samples'
    embeddings (mean over samples) to f(source) and f(target). Default sampling: 4 samples per condition."""
    run = default_run(run, 4)
    feats, _ = load_bank(bank, pipe.encoder)
    x = encoder_view([source, target], pipe.encoder)  # (2, 3, C, C)
    h = embed(pipe.encoder, x)  # (2, D)
    if feats.shape[1] != h.shape[1]:
        raise ValueError(f"the bank holds {feats.shape[1]}-d embeddings but the model's encoder gives {h.shape[1]}-d")
    idx = nearest_neighbours(h[0], feats, k)
    mask = common_dims(feats[idx], eps, min_frac)  # (D,)
    cond = torch.stack([h[0], edit_embedding(h[0], mask), edit_embedding(h[0], mask, h[1])])  # (3, D)
    samples = sample(pipe, cond, [0, 0, 0], run)  # (3*K, 3, R, R), the same noise for all three
    h_hat = embed(pipe.encoder, samples).view(3, run.num_samples, -1)  # (3, K, D)
    numbers = {"sampling": run_record(run, pipe), "k": k, "eps": eps, "min_frac": min_frac, "neighbours": idx.tolist(),
               "dim": int(mask.numel()), "num_common": int(mask.sum()), "common_dims": mask.nonzero()[:, 0].tolist(),
               "source_nonzero_frac": (h[0].abs() > eps).double().mean().item(), "conditions": {
                   c: {"cos_condition_to_source": cosine(cond[i], h[0]).item(),
                       "cos_condition_to_target": cosine(cond[i], h[1]).item(),
                       "cos_samples_to_source": cosine(h_hat[i], h[0]).mean().item(),
                       "cos_samples_to_target": cosine(h_hat[i], h[1]).mean().item()}
                   for i, c in enumerate(CONDITIONS)}}
    ends = to_pil(at_resolution(x, pipe.resolution))
    per = chunks(to_pil(samples), run.num_samples)
    rows = [[ends[0]] + per[0], [ends[0]] + per[1], [ends[1]] + per[2]]
    labels = [f"{c}\ncos to src {numbers['conditions'][c]['cos_samples_to_source']:.2f}" for c in CONDITIONS]
    title = (f"{numbers['num_common']} of {numbers['dim']} dims common to the {k} nearest neighbours "
             f"(|h| > {eps:g} in > {min_frac:.0%})\nrows: source | samples from h, h with them zeroed, "
             f"target | samples from h with them transplanted")
    return AnalysisResult("manipulate", numbers, labelled_grid(rows, labels, title))
