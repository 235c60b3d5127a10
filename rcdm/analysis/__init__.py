"""Analyses of what a frozen representation keeps (Bordes et al. 2022 and follow-ups), one module per idea.

Every analysis is a function that samples from a pipeline with seeded per-sample noise and returns an
`AnalysisResult`: JSON-ready `numbers` and a `figure`; `result.save("fig.png")` writes both (fig.png, fig.json).
`rcdm analyze <kind>` (rcdm.cli.analyze) runs each one from the command line.

    spread        K samples per image and their per-pixel std map                      (rcdm.analysis.spread)
    compare       several models on the same images and noise, rank and diversity      (rcdm.analysis.models)
    interpolate   lerp / slerp between two embeddings, t = 0 ... 1, same noise         (rcdm.analysis.interpolate)
    manipulate    zero or transplant the dims shared by the k nearest neighbours       (rcdm.analysis.manipulate)
    invariance    condition on f(t x): how much of t the samples keep, 1 ... 0         (rcdm.analysis.invariance)
    adversarial   PGD towards another image's embedding, then sample                   (rcdm.analysis.adversarial)
    memorization  Déjà vu: the foreground from a background crop, train vs held-out    (rcdm.analysis.memorization)
    layers        one RCDM per encoder layer (Guillotine Regularization)               (rcdm.analysis.models)
"""
from .adversarial import adversarial, pgd_attack
from .common import AnalysisResult, at_resolution, encoder_view, load_bank, nearest_neighbours
from .interpolate import interpolate, interpolate_embeddings
from .invariance import AUGMENTATIONS, AugmentParams, augment, invariance, statistic
from .manipulate import common_dims, edit_embedding, manipulate
from .memorization import background_crop, memorization
from .models import compare, layers
from .spread import spread

__all__ = ["AUGMENTATIONS", "AnalysisResult", "AugmentParams", "adversarial", "at_resolution", "augment",
           "background_crop", "common_dims", "compare", "edit_embedding", "encoder_view", "interpolate",
           "interpolate_embeddings", "invariance", "layers", "load_bank", "manipulate", "memorization",
           "nearest_neighbours", "pgd_attack", "spread", "statistic"]
