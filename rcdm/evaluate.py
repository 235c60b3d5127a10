"""`rcdm evaluate`: how faithfully an RCDM's samples carry the representation they were drawn from.

    rcdm evaluate --model pretrained/rcdm-cifar10-backbone --data cifar10_jpeg.npz:test --num-images 200 \\
        --out metrics.json --summary-png metrics.png

The first `--num-images` readable items of the data (from item `--offset` on) are the references x (a packed
CIFAR-10 npz is class-interleaved, so a prefix is class-balanced). Each x is encoded with the model's encoder, K
samples are drawn from that embedding, and the samples are re-encoded by the judge (by default the same encoder and
layer).
The metrics (rank, FD, diversity, kNN class agreement, optional Inception FID/KID) are defined in `rcdm.metrics`.

The sampler, steps and guidance default to the model's recorded choice. Reproducibility: sample k of dataset item i
starts from noise seeded from (seed, i, k) (rcdm.sampling), so it does not depend on `batch_size`, on
`num_images` or on the device; float round-off (about 1e-6 in pixel values here) can only move a rank when two
candidates are tied to that precision.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .data import open_dataset
from .images import to_pil, to_uint8
from .metrics import (class_agreement, classifier_scores, fd_stats, group_cosine_spread, group_pixel_rms, rank_stats,
                      sample_ranks)
from .references import ENCODE_CHUNK, References, read_references, train_features
from .sampling import Sampling, count_unet_rows, sample_batches
from .viz import image_grid

FORMAT = "rcdm-metrics/1"
NUM_EXAMPLES = 4  # rows of (input, samples) in the summary figure


# ------------------------------------------------------------------------------------------------ sampling
def _sample_and_judge(pipe, refs: References, judge, run: Sampling, inception, progress: bool, classifier=None):
    """Draw all samples, judge-encode them and stream the per-group pixel spread, the Inception features and the
    classifier's (logits, features). Returns ĥ (N*K, D), pixel spreads (N,) or None, the first NUM_EXAMPLES groups
    as uint8 (K, 3, R, R), and the classifier outputs (or None)."""
    from tqdm.auto import tqdm

    k, h_hat, spread, examples, classified = run.num_samples, [], [], [], []
    with tqdm(total=len(refs.indices) * k, desc="sampling", unit="sample", disable=not progress) as bar:
        for a, x in sample_batches(pipe, refs.feats[0], refs.indices, run):
            h_hat.append(judge.encode(x, batch_size=ENCODE_CHUNK).cpu())
            if k > 1:
                spread.append(group_pixel_rms(x, k))
            x8 = to_uint8(x)
            if inception is not None:
                inception.update(x8, real=False)
            if classifier is not None:
                classified.append(classifier.classify(x8))
            examples += list(x8.split(k))[: max(0, NUM_EXAMPLES - a)]
            bar.update(len(x))
    clf = tuple(torch.cat(t) for t in zip(*classified)) if classified else None
    return torch.cat(h_hat), torch.cat(spread) if spread else None, examples, clf


# ------------------------------------------------------------------------------------------------ Inception
class InceptionScores:
    """Inception FID and KID via torchmetrics (FID and KID share one Inception-v3), fed uint8 images at the
    model's resolution; torchmetrics resizes them to 299."""

    def __init__(self, weights: str, num_real: int, num_fake: int, device):
        from torchmetrics.image.fid import FrechetInceptionDistance  # optional dependency, with torch-fidelity
        from torchmetrics.image.kid import KernelInceptionDistance

        self.fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights).to(device)
        self.kid = KernelInceptionDistance(feature=self.fid.inception, subset_size=min(1000, num_real, num_fake))
        self.kid.to(device)

    @classmethod
    def create(cls, weights: str | None, real_uint8: torch.Tensor, num_fake: int, device, chunk: int = 64):
        """(scores fed with the real images, None), or (None, why the Inception metrics are skipped). The real
        images are the references at the model's resolution, so both sides go through the same resize to 299."""
        if not weights:
            return None, "no --inception-weights given (Inception-v3 weights are never downloaded)"
        if not Path(weights).is_file():
            raise FileNotFoundError(f"--inception-weights {weights}: no such file")
        try:
            scores = cls(weights, len(real_uint8), num_fake, device)
        except ImportError as e:  # torchmetrics, or the torch-fidelity it needs for Inception-v3
            return None, f"torchmetrics with torch-fidelity is not installed ({e}): pip install 'rcdm[metrics]'"
        for x in real_uint8.split(chunk):
            scores.update(x, real=True)
        return scores, None

    def update(self, images_uint8: torch.Tensor, real: bool) -> None:
        # torchmetrics takes images, not features, so Inception runs once per metric: cheap next to sampling.
        for m in (self.fid, self.kid):
            m.update(images_uint8.to(self.fid.device), real=real)

    def compute(self, seed: int) -> dict:
        with torch.random.fork_rng(devices=[]):  # KID draws its subsets with the global RNG
            torch.manual_seed(seed)
            kid_mean, kid_std = self.kid.compute()
        return {"fid": self.fid.compute().item(), "kid_mean": kid_mean.item(), "kid_std": kid_std.item(),
                "kid_subset_size": self.kid.subset_size}


# ------------------------------------------------------------------------------------------------ evaluate
def evaluate(pipe, data: str, num_images: int, run: Sampling | None = None, judge=None,
             train_data: str | None = None, progress: bool = True, inception_weights: str | None = None,
             summary_png: str | None = None, offset: int = 0, classifier=None) -> dict:
    """Sample `run.num_samples` images from the embedding of each of the first `num_images` items of `data`
    from position `offset` on (a spec for `rcdm.data.open_dataset`; a bare .npz means its test split) and measure
    their fidelity (`rcdm.metrics`). An `offset` gives references disjoint from the first `num_images`, e.g. a set
    to choose between models on while the first ones stay the reported metric. `run` defaults to one sample per
    image with the model's recorded sampler.

    `judge` (a FrozenEncoder) scores the samples; default: the pipeline's own encoder. `train_data` (a data spec
    or an embedding cache of the judge) enables the kNN class agreement. `classifier` (an `rcdm.judge.Judge`)
    adds the independent classifier's scores under "classifier"; its real-vs-real FD reads the `num_images` items
    that follow the references. Returns the dict `rcdm evaluate` writes.
    """
    run = (run or Sampling()).resolve(pipe)
    judge = pipe.encoder if judge is None else judge
    t0 = time.time()
    refs = _encode_references(pipe, judge, data, num_images, progress, offset)
    n, k = len(refs.indices), run.num_samples
    inception, skipped = InceptionScores.create(inception_weights, refs.thumbs, n * k, pipe.device)
    t1 = time.time()
    with count_unet_rows(pipe) as count:
        h_hat, spread, examples, classified = _sample_and_judge(pipe, refs, judge, run, inception, progress, classifier)
    t2 = time.time()
    metrics = {"format": FORMAT, "data": data, "num_images": n, "offset": offset, "model": _model_info(pipe),
               "sampling": {**asdict(run), "nfe": count["rows"] / (n * k)},
               "judge": judge.config(), **_scores(refs, h_hat, spread, k),
               "class_agreement": _class_agreement(train_data, judge, refs, h_hat, progress),
               "inception": inception.compute(run.seed) if inception is not None else {"skipped": skipped},
               "classifier": _classifier(classifier, classified, refs, data, pipe.resolution, progress),
               "timing": {"encode_seconds": t1 - t0, "sample_seconds": t2 - t1, "total_seconds": time.time() - t0,
                          "samples_per_second": n * k / (t2 - t1)}}
    if summary_png:
        save_summary(summary_png, metrics, refs.thumbs, examples)
    return metrics


def _encode_references(pipe, judge, data: str, num_images: int, progress: bool, offset: int) -> References:
    """References encoded by the model's encoder (feats[0], to sample from) and the judge (feats[-1])."""
    encoders = [pipe.encoder] if judge is pipe.encoder else [pipe.encoder, judge]
    refs = read_references(open_dataset(data, "test"), num_images, encoders, pipe.resolution, progress, offset)
    if len(refs.indices) < 2:
        raise ValueError("the rank metric needs at least 2 reference images")
    return refs


def _model_info(pipe) -> dict:
    return {"encoder": pipe.encoder.config(), "resolution": pipe.resolution,
            "prediction_type": pipe.unet.config.prediction_type}


def _scores(refs: References, h_hat: torch.Tensor, spread, k: int) -> dict:
    """Rank, FD and diversity, plus the per-image ranks (K per image) for later analysis."""
    h_ref = refs.feats[-1]
    ranks = sample_ranks(h_ref, h_hat).view(-1, k)  # (N, K)
    div = {"pixel_rms": None, "feature_cosine": None} if k < 2 else {
        "pixel_rms": spread.mean().item(), "feature_cosine": group_cosine_spread(h_hat, k).mean().item()}
    return {"rank": rank_stats(h_ref, h_hat), "fd": fd_stats(h_ref, h_hat), "diversity": div,
            "per_image": {"index": refs.indices.tolist(), "label": refs.labels.tolist(), "rank": ranks.tolist()}}


def _classifier(classifier, classified, refs: References, data: str, resolution: int, progress: bool) -> dict:
    """The independent classifier's scores (rcdm.metrics definition 5), or why they were skipped."""
    if classifier is None:
        return {"skipped": "no --classifier given"}
    if (refs.labels < 0).any():
        return {"skipped": "the evaluation data has no class labels"}
    n = len(refs.indices)
    ds = open_dataset(data, "test")
    start = int(refs.indices[-1]) + 1  # real images disjoint from the references, as many as there are references
    real = read_references(ds, n, [], resolution, progress, start).thumbs if start < len(ds) else None
    logits_ref, feats_ref = classifier.classify(refs.thumbs)
    feats_real = classifier.classify(real)[1] if real is not None else None
    scores = classifier_scores(*classified, logits_ref, feats_ref, refs.labels, feats_real)
    if scores["num_real"] < n:
        scores["fd_real_note"] = f"only {scores['num_real']} real images follow the references (of {n} wanted)"
    return {"path": classifier.info.get("path", ""), **scores}


def _class_agreement(train_data, judge, refs: References, h_hat, progress) -> dict:
    if not train_data:
        return {"skipped": "no --train-data given"}
    if (refs.labels < 0).any():
        return {"skipped": "the evaluation data has no class labels"}
    feats, labels = train_features(train_data, judge, progress)
    if (labels < 0).any():
        return {"skipped": f"{train_data} has no class labels"}
    return class_agreement(feats, labels, refs.feats[-1], h_hat, refs.labels)


# ------------------------------------------------------------------------------------------------ figure
def save_summary(path, metrics: dict, thumbs: torch.Tensor, examples: list[torch.Tensor]) -> None:
    """PNG: the histogram of per-sample ranks beside the first rows of (input, its K samples)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    rows = [to_pil(thumbs[i]) + to_pil(group) for i, group in enumerate(examples)]
    r, n = metrics["rank"], metrics["num_images"]
    img_width = max(0.5, len(rows[0]) / len(rows))  # the grid's aspect ratio, relative to the square histogram
    fig = Figure(figsize=(4.5 * (1 + img_width), 4.5), layout="constrained")
    ax_hist, ax_img = fig.subplots(1, 2, width_ratios=[1, img_width])
    ax_hist.hist(np.ravel(metrics["per_image"]["rank"]), bins=np.arange(1, n + 2) - 0.5 if n <= 50 else 50)
    ax_hist.axvline(r["chance_mean"], color="gray", ls="--", label=f"chance mean {r['chance_mean']:.1f}")
    ax_hist.set(xlabel=f"rank of the source among {n} references", ylabel="samples",
                title=f"mean rank {r['mean']:.2f}, top-1 {r['top1_pct']:.1f}%")
    ax_hist.legend()
    ax_img.imshow(image_grid(rows, upscale=2))
    ax_img.set_title("input | samples")
    ax_img.axis("off")
    s = metrics["sampling"]
    fig.suptitle(f"{s['scheduler']} x {s['num_inference_steps']} steps, guidance {s['guidance_scale']}, "
                 f"judge {metrics['judge']['spec']}")
    fig.savefig(path, dpi=100)
