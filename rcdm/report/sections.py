"""The report's sections: each runs one of rcdm's measurements on one model (or all of them, for the comparison)
and returns (numbers, figures). Nothing here re-implements a metric: fidelity is `rcdm.evaluate.evaluate`, and the
others are the analyses of `rcdm.analysis`; what is added is the intervals over images (`stats`)."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..analysis import compare, interpolate, manipulate, spread
from ..analysis import invariance as run_invariance
from ..analysis import memorization as run_memorization
from ..analysis.common import read_images
from ..analysis.invariance import score as analysis_score  # the analysis' own formula: the two never disagree
from ..cache import EmbeddingCache
from ..data import open_dataset
from ..evaluate import evaluate
from ..judge import load_judge
from ..references import read_references
from .settings import ReportSettings, train_split
from .stats import bootstrap, wilson

INVARIANCE_KEYS = ("s_x", "s_tx", "s_samples_x", "s_samples_tx")  # rcdm.analysis.invariance statistics


@dataclass
class Bank:
    """Labelled embeddings in one model's encoder space: kNN labels (class agreement, memorization) and
    nearest neighbours (manipulation). `path` is the same bank as an embedding cache, for `evaluate`."""

    feats: torch.Tensor
    labels: torch.Tensor | None
    path: str | None
    source: str       # what the bank is, in words
    why_not: str = ""  # why there is no labelled train bank, if there is none


@dataclass
class Inputs:
    """The images every section draws from, read once. `order` lists test positions class-balanced: the first
    image of each class in turn, then the second of each, and so on (data order without labels)."""

    data: str
    images: list[torch.Tensor]          # uint8 (3, H, W), the first test items
    labels: torch.Tensor
    order: list[int]
    train_spec: str | None
    no_train: str                       # why there is no train split ("" if there is one)
    train_images: list[torch.Tensor] = field(default_factory=list)
    train_labels: torch.Tensor | None = None

    def pick(self, n: int) -> list[torch.Tensor]:
        return [self.images[i] for i in self.order[:n]]

    def pick_labels(self, n: int) -> torch.Tensor:
        return self.labels[self.order[:n]]


def read_inputs(data: str, s: ReportSettings) -> Inputs:
    n = max(100, s.sample_images, s.invariance_images, s.memorization_images, s.compare_images) * 2
    images, labels = read_images(data, n, "test")
    if len(images) < 2:
        raise ValueError(f"{data}: the report needs at least 2 readable test images, found {len(images)}")
    train_spec, why = train_split(data)
    inputs = Inputs(data, images, labels, balanced_order(labels), train_spec, why)
    if train_spec is not None:
        inputs.train_images, inputs.train_labels = read_images(train_spec, s.memorization_images, "train")
    return inputs


def balanced_order(labels: torch.Tensor) -> list[int]:
    """Positions in round-robin order over the classes, each class in data order."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        by_class.setdefault(y, []).append(i)
    queues = list(by_class.values())
    return [q[j] for j in range(max(map(len, queues))) for q in queues if j < len(q)]


# ------------------------------------------------------------------------------------------------ bank
def make_bank(pipe, inputs: Inputs, s: ReportSettings, cache_path: Path) -> Bank:
    """Embed `bank_size` train items after the ones memorization tests (so those stay out of the bank) and write
    them as an `rcdm embed`-style cache (what `evaluate` reads). Without a labelled train split: test items, for
    the manipulation's neighbours only."""
    if inputs.train_spec is None:
        refs = read_references(open_dataset(inputs.data, "test"), s.bank_size, [pipe.encoder], progress=False)
        bank = Bank(refs.feats[0], None, None, f"{len(refs.indices)} test images (no train split)", inputs.no_train)
        _save_bank(bank, refs.indices, refs.labels, pipe, inputs.data, cache_path)
        return bank
    skip = len(inputs.train_images)
    refs = read_references(open_dataset(inputs.train_spec, "train"), skip + s.bank_size, [pipe.encoder],
                           progress=False)
    feats, labels, idx = refs.feats[0][skip:], refs.labels[skip:], refs.indices[skip:]
    if len(feats) < 2:
        feats, labels, idx = refs.feats[0], refs.labels, refs.indices
        bank = Bank(feats, None, None, f"{len(feats)} train images", "the train split is too small for a bank")
    elif (labels < 0).any():
        bank = Bank(feats, None, None, f"{len(feats)} unlabelled train images", "the train split has no labels")
    else:
        bank = Bank(feats, labels, str(cache_path), f"{len(feats)} train images (items {int(idx[0])}-{int(idx[-1])})")
    _save_bank(bank, idx, labels, pipe, inputs.train_spec, cache_path)
    return bank


def _save_bank(bank: Bank, indices, labels, pipe, data: str, path: Path) -> None:
    meta = {"encoder": pipe.encoder.config(), "data": data, "views": ["identity"], "note": "rcdm report bank",
            "source": bank.source, "why_not": bank.why_not, "labelled": bank.labels is not None}
    EmbeddingCache(bank.feats[:, None].contiguous(), indices, labels, meta).save(path)


def load_bank(path: Path) -> Bank:
    """A bank `make_bank` wrote."""
    c = EmbeddingCache.load(path)
    labelled = c.meta["labelled"]
    return Bank(c.embeddings[:, 0].float(), c.labels if labelled else None, str(path) if labelled else None,
                c.meta["source"], c.meta["why_not"])


# ------------------------------------------------------------------------------------------------ sections
def fidelity(pipe, inputs: Inputs, bank: Bank, s: ReportSettings):
    """`rcdm.evaluate.evaluate` on the first `num_images` test items, with bootstrap intervals over images for
    the rank numbers and Wilson intervals (n = images) for the class agreement."""
    judge = load_judge(s.classifier, pipe.device) if s.classifier else None
    with tempfile.TemporaryDirectory() as d:
        png = Path(d) / "summary.png"
        m = evaluate(pipe, inputs.data, s.num_images, s.sampling(s.samples_per_image), train_data=bank.path,
                     progress=False, summary_png=str(png), classifier=judge)
        with Image.open(png) as im:
            fig = im.copy()
    ranks, n = np.asarray(m["per_image"]["rank"], dtype=np.float64), m["num_images"]
    ci = {"mean": bootstrap(lambda r: r.mean(), ranks, s.bootstrap, s.seed),
          "top1_pct": bootstrap(lambda r: 100 * (r == 1).mean(), ranks, s.bootstrap, s.seed),
          "top5_pct": bootstrap(lambda r: 100 * (r <= 5).mean(), ranks, s.bootstrap, s.seed)}
    ca = m["class_agreement"]
    if "skipped" in ca:
        ca = {"skipped": bank.why_not or ca["skipped"]}
    else:
        ca = {**ca, "samples_ci": wilson(ca["samples"], n), "real_ci": wilson(ca["real"], n)}
    clf = m["classifier"]
    if "accuracy_samples" in clf:
        clf = {**clf, "samples_ci": wilson(clf["accuracy_samples"], n), "sources_ci": wilson(clf["accuracy_sources"], n)}
    numbers = {"num_images": n, "samples_per_image": s.samples_per_image, "rank": m["rank"], "rank_ci": ci,
               "fd": m["fd"], "diversity": m["diversity"], "class_agreement": ca, "classifier": clf,
               "bank": bank.source,
               "sampling": m["sampling"], "per_image_rank": m["per_image"]["rank"]}
    return numbers, {"summary": fig}


def samples(pipe, inputs: Inputs, s: ReportSettings):
    """`rcdm.analysis.spread` on the class-balanced inputs: each input, its K samples and their std map."""
    res = spread(pipe, inputs.pick(s.sample_images), s.sampling(s.sample_k))
    per = res.numbers["per_image_pixel_std"]
    res.numbers["mean_pixel_std_ci"] = bootstrap(lambda r: r.mean(), per, s.bootstrap, s.seed)
    res.numbers["labels"] = inputs.pick_labels(s.sample_images).tolist()
    return res.numbers, {"grid": res.figure}


def invariance(pipe, inputs: Inputs, s: ReportSettings, augmentations):
    """`rcdm.analysis.invariance`, one image per call so that each image's statistics are kept: the score is the
    analysis' ratio of means over images (its docstring), and the bootstrap resamples images. Image j is sampled
    with seed `seed * 1000003 + j` (one call holds one image, so the seed, not the noise key, tells images apart)."""
    per = {a: [] for a in augmentations}
    example = None
    for j, img in enumerate(inputs.pick(s.invariance_images)):
        res = run_invariance(pipe, [img], augmentations, run=s.sampling(s.invariance_k, s.seed * 1000003 + j))
        stats = res.numbers["models"]["model"]["statistics"]
        for a in augmentations:
            per[a].append([stats[a][key] for key in INVARIANCE_KEYS])
        example = res.figure if example is None else example
    scores = {a: invariance_score(np.mean(per[a], 0)) for a in augmentations}
    ci = {a: bootstrap(lambda r: _nan(invariance_score(r.mean(0))), per[a], s.bootstrap, s.seed) for a in augmentations}
    numbers = {"num_images": len(per[augmentations[0]]), "samples_per_image": s.invariance_k, "scores": scores,
               "scores_ci": ci, "per_image_statistics": per, "statistics_order": list(INVARIANCE_KEYS)}
    return numbers, {"example": example}


def invariance_score(means) -> float | None:
    """The score of rcdm.analysis.invariance from the four means (s_x, s_tx, s_samples_x, s_samples_tx)."""
    return analysis_score(dict(zip(INVARIANCE_KEYS, (float(v) for v in means))))


def _nan(v):
    return float("nan") if v is None else v


def interpolation(pipe, inputs: Inputs, s: ReportSettings):
    """`rcdm.analysis.interpolate` (lerp) between the first two class-balanced inputs, one sample per point."""
    a, b = inputs.pick(2)
    res = interpolate(pipe, a, b, s.interpolation_points, modes=("lerp",), run=s.sampling(1))
    res.numbers["labels"] = inputs.pick_labels(2).tolist()
    return res.numbers, {"strip": res.figure}


def manipulation(pipe, inputs: Inputs, bank: Bank, s: ReportSettings, k: int = 10):
    """`rcdm.analysis.manipulate` with the first two class-balanced inputs as source and target."""
    src, tgt = inputs.pick(2)
    res = manipulate(pipe, src, tgt, bank.feats, k=min(k, len(bank.feats) - 1), run=s.sampling(s.manipulation_k))
    res.numbers["bank"] = bank.source
    return res.numbers, {"grid": res.figure}


def memorization(pipe, inputs: Inputs, bank: Bank, s: ReportSettings):
    """`rcdm.analysis.memorization` (Déjà vu) on the first train items vs the class-balanced test inputs, with
    Wilson intervals (n = images) for every fraction. Returns ({"skipped": why}, {}) when it cannot run."""
    if bank.labels is None or bank.path is None:
        return {"skipped": bank.why_not or "no labelled train bank"}, {}
    n = len(inputs.train_images)
    res = run_memorization(pipe, inputs.train_images, inputs.train_labels, inputs.pick(n), inputs.pick_labels(n),
                           (bank.feats, bank.labels), run=s.sampling(s.memorization_k))
    num = res.numbers
    for split in ("train", "test"):
        num[split]["ci"] = {key: wilson(v, num[split]["num_images"]) for key, v in num[split].items()
                            if key in ("patch_knn_accuracy", "patch", "knn", "full_image_knn_accuracy")}
    num["bank"] = bank.source
    return num, {"grid": res.figure}


def comparison(pipes: dict, inputs: Inputs, s: ReportSettings):
    """`rcdm.analysis.compare` on the first class-balanced inputs: every model on the same images and noise."""
    if len(pipes) < 2:
        return {"skipped": "the comparison needs at least two models (give several --model)"}, {}
    res = compare(pipes, inputs.pick(s.compare_images), s.sampling(s.compare_k))
    return res.numbers, {"grid": res.figure}
