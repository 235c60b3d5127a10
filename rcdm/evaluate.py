"""`rcdm evaluate`: how faithfully an RCDM's samples carry the representation they were drawn from.

    rcdm evaluate --model pretrained/rcdm-cifar10-backbone --data cifar10_jpeg.npz:test --num-images 200 \\
        --steps 50 --scheduler ddim --out metrics.json --summary-png metrics.png

The first `--num-images` readable items of the data are the references x (a packed CIFAR-10 npz is
class-interleaved, so a prefix is class-balanced). Each x is encoded with the model's encoder, K samples are drawn
from that embedding, and the samples are re-encoded by the judge (by default the same encoder and layer).
The metrics (rank, FD, diversity, kNN class agreement, optional Inception FID/KID) are defined in `rcdm.metrics`.

Reproducibility: sample k of dataset item i starts from noise drawn by its own CPU generator, seeded from
(seed, i, k). The noise of a sample therefore does not depend on `batch_size`, on `num_images` or on the device;
what remains is float round-off in batched convolutions and matmuls (about 1e-6 in pixel values here), which can
only move a rank when two candidates are tied to that precision.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import ImageError, check_bad, open_dataset, resize_center_crop
from .metrics import class_agreement, fd_stats, group_cosine_spread, group_pixel_rms, rank_stats, sample_ranks

FORMAT = "rcdm-metrics/1"
ENCODE_CHUNK = 256  # images per encoder call; fixed, so features never depend on `batch_size`
NUM_EXAMPLES = 4  # rows of (input, samples) in the summary figure


@dataclass(frozen=True)
class Sampling:
    """How the samples are drawn; recorded in the metrics JSON."""

    samples_per_image: int = 1    # K samples per reference image
    steps: int = 50               # sampler steps
    scheduler: str | None = "ddim"  # sampler name (rcdm.schedulers); None = the pipeline's current one
    guidance: float = 1.0         # classifier-free guidance scale; 1 = conditional only
    seed: int = 0                 # base seed of the per-sample generators
    batch_size: int = 64          # samples per pipeline call (memory only; results do not depend on it)

    def __post_init__(self):
        for name in ("samples_per_image", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        from .schedulers import SCHEDULERS

        if self.scheduler is not None and self.scheduler not in SCHEDULERS:  # fail before the references are encoded
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")


@dataclass
class References:
    """The reference images x, encoded. Row i of every tensor is dataset item `indices[i]`."""

    indices: torch.Tensor        # (N,) positions in the dataset
    labels: torch.Tensor         # (N,) class labels, -1 where the data has none
    thumbs: torch.Tensor | None  # (N, 3, R, R) uint8: x at the model's resolution (Inception FID, figures)
    feats: list[torch.Tensor]    # one float32 (N, D_e) CPU tensor per encoder asked for


# ------------------------------------------------------------------------------------------------ references
def _readable(ds, n: int, bad: list):
    """(index, uint8 (3, H, W), label) for the first n items of `ds` that decode; the others go to `bad`."""
    found = 0
    for i in range(len(ds)):
        if found == n:
            return
        try:
            x, y = ds[i]
        except ImageError as e:
            bad.append((i, str(e)))
            continue
        found += 1
        yield i, x, y


def read_references(ds, num_images: int, encoders, resolution: int | None = None, progress: bool = True):
    """Encode the first `num_images` readable items of `ds` with each encoder, in fixed chunks. Unreadable items
    are skipped and counted; more than 1% of them is an error (as in `rcdm.data.decode_all`)."""
    from tqdm.auto import tqdm

    bad, idx, labels, thumbs, feats = [], [], [], [], [[] for _ in encoders]
    items = _readable(ds, num_images, bad)
    with tqdm(total=min(num_images, len(ds)), desc="encoding", unit="img", disable=not progress) as bar:
        while chunk := list(itertools.islice(items, ENCODE_CHUNK)):
            pils = [Image.fromarray(x.permute(1, 2, 0).numpy()) for _, x, _ in chunk]  # as `pipe(images=...)` sees them
            for out, enc in zip(feats, encoders):
                out.append(enc.encode(pils, batch_size=ENCODE_CHUNK).cpu())
            if resolution is not None:
                thumbs.append(torch.stack([resize_center_crop(x, resolution) for _, x, _ in chunk]))
            idx += [i for i, _, _ in chunk]
            labels += [y for _, _, y in chunk]
            bar.update(len(chunk))
    check_bad(bad, len(idx) + len(bad), max_bad_frac=0.01)
    if not idx:
        raise ValueError("the data holds no readable images")
    return References(torch.tensor(idx), torch.tensor(labels), torch.cat(thumbs) if thumbs else None,
                      [torch.cat(f) for f in feats])


def train_features(train_data: str, judge, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled training embeddings in the judge's space: from an embedding cache (`rcdm embed`, view 0 = the
    image as is), which must come from the judge's encoder and layer, or by encoding a data spec."""
    if train_data.endswith(".safetensors"):
        from .cache import EmbeddingCache
        from .pipeline import check_encoder_matches

        cache = EmbeddingCache.load(train_data)
        check_encoder_matches(judge, cache.meta["encoder"], train_data)
        return cache.embeddings[:, 0].float(), cache.labels
    ds = open_dataset(train_data, "train")
    refs = read_references(ds, len(ds), [judge], progress=progress)
    return refs.feats[0], refs.labels


# ------------------------------------------------------------------------------------------------ sampling
def sample_generators(seed: int, indices, k: int) -> list[torch.Generator]:
    """One CPU generator per sample, input-major, seeded from (seed, dataset index, sample number)."""
    gens = []
    for i in indices:
        for j in range(k):
            # SeedSequence hashes the tuple, so nearby (seed, i, j) give unrelated streams.
            hi, lo = np.random.SeedSequence([seed, int(i), j]).generate_state(2, np.uint32)
            gens.append(torch.Generator().manual_seed(int(hi) << 32 | int(lo)))
    return gens


@contextmanager
def sampler_setup(pipe, scheduler: str | None):
    """Swap in the named sampler and silence the per-step bar, restoring both afterwards. Yields a dict whose
    "rows" counts the samples passed through the UNet (NFE x samples; a guided step counts 2)."""
    from .schedulers import make_scheduler

    old_scheduler, old_bar = pipe.scheduler, dict(getattr(pipe, "_progress_bar_config", {}))
    count = {"rows": 0}

    def hook(module, args, kwargs):
        count["rows"] += (args[0] if args else kwargs["sample"]).shape[0]

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        if scheduler is not None:
            pipe.scheduler = make_scheduler(scheduler, old_scheduler.config)
        pipe.set_progress_bar_config(**{**old_bar, "disable": True})
        yield count
    finally:
        handle.remove()
        pipe.scheduler = old_scheduler
        pipe.set_progress_bar_config(**old_bar)


def sample_batches(pipe, h_cond: torch.Tensor, indices, run: Sampling):
    """Yield (first reference position, samples (b*K, 3, R, R) in [0, 1]); every batch holds whole groups of K."""
    per = max(1, run.batch_size // run.samples_per_image)
    for a in range(0, len(h_cond), per):
        gens = sample_generators(run.seed, indices[a : a + per], run.samples_per_image)
        out = pipe(embeddings=h_cond[a : a + per], num_samples=run.samples_per_image, num_inference_steps=run.steps,
                   guidance_scale=run.guidance, generator=gens, output_type="pt")
        yield a, out.images


def to_uint8(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images -> uint8, rounded as `pipe(..., output_type="pil")` rounds."""
    return (x01 * 255).round().clamp(0, 255).to(torch.uint8)


def _sample_and_judge(pipe, refs: References, judge, run: Sampling, inception, progress: bool):
    """Draw all samples, judge-encode them and stream the per-group pixel spread and the Inception features.
    Returns ĥ (N*K, D), pixel spreads (N,) or None, and the first NUM_EXAMPLES groups as uint8 (K, 3, R, R)."""
    from tqdm.auto import tqdm

    k, h_hat, spread, examples = run.samples_per_image, [], [], []
    with tqdm(total=len(refs.indices) * k, desc="sampling", unit="sample", disable=not progress) as bar:
        for a, x in sample_batches(pipe, refs.feats[0], refs.indices, run):
            h_hat.append(judge.encode(x, batch_size=ENCODE_CHUNK).cpu())
            if k > 1:
                spread.append(group_pixel_rms(x, k))
            x8 = to_uint8(x)
            if inception is not None:
                inception.update(x8, real=False)
            examples += list(x8.split(k))[: max(0, NUM_EXAMPLES - a)]
            bar.update(len(x))
    return torch.cat(h_hat), torch.cat(spread) if spread else None, examples


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
            return None, f"torchmetrics with torch-fidelity is not installed ({e})"
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
def evaluate(pipe, data: str, num_images: int, samples_per_image: int = 1, steps: int = 50,
             scheduler: str | None = "ddim", guidance: float = 1.0, seed: int = 0, judge=None,
             train_data: str | None = None, batch_size: int = 64, progress: bool = True,
             inception_weights: str | None = None, summary_png: str | None = None) -> dict:
    """Sample K images from the embedding of each of the first `num_images` items of `data` (a spec for
    `rcdm.data.open_dataset`; a bare .npz means its test split) and measure their fidelity (`rcdm.metrics`).

    `judge` (a FrozenEncoder) scores the samples; default: the pipeline's own encoder. `train_data` (a data spec
    or an embedding cache of the judge) enables the kNN class agreement. Returns the dict `rcdm evaluate` writes.
    """
    run = Sampling(samples_per_image, steps, scheduler, guidance, seed, batch_size)
    judge = pipe.encoder if judge is None else judge
    t0 = time.time()
    refs = _encode_references(pipe, judge, data, num_images, progress)
    n, k = len(refs.indices), run.samples_per_image
    inception, skipped = InceptionScores.create(inception_weights, refs.thumbs, n * k, pipe.device)
    t1 = time.time()
    with sampler_setup(pipe, scheduler) as count:
        sampler = _sampler_name(pipe)
        h_hat, spread, examples = _sample_and_judge(pipe, refs, judge, run, inception, progress)
    t2 = time.time()
    metrics = {"format": FORMAT, "data": data, "num_images": n, "model": _model_info(pipe),
               "sampling": {**asdict(run), "scheduler": sampler, "nfe": count["rows"] / (n * k)},
               "judge": judge.config(), **_scores(refs, h_hat, spread, k),
               "class_agreement": _class_agreement(train_data, judge, refs, h_hat, progress),
               "inception": inception.compute(seed) if inception is not None else {"skipped": skipped},
               "timing": {"encode_seconds": t1 - t0, "sample_seconds": t2 - t1, "total_seconds": time.time() - t0,
                          "samples_per_second": n * k / (t2 - t1)}}
    if summary_png:
        save_summary(summary_png, metrics, refs.thumbs, examples)
    return metrics


def _encode_references(pipe, judge, data: str, num_images: int, progress: bool) -> References:
    """References encoded by the model's encoder (feats[0], to sample from) and the judge (feats[-1])."""
    encoders = [pipe.encoder] if judge is pipe.encoder else [pipe.encoder, judge]
    refs = read_references(open_dataset(data, "test"), num_images, encoders, pipe.resolution, progress)
    if len(refs.indices) < 2:
        raise ValueError("the rank metric needs at least 2 reference images")
    return refs


def _sampler_name(pipe) -> str:
    from .schedulers import scheduler_name

    return scheduler_name(pipe.scheduler)


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

    from .viz import image_grid

    def pil(x):
        return Image.fromarray(x.permute(1, 2, 0).numpy())

    rows = [[pil(thumbs[i])] + [pil(s) for s in group] for i, group in enumerate(examples)]
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
    fig.suptitle(f"{s['scheduler']} x {s['steps']} steps, guidance {s['guidance']}, judge {metrics['judge']['spec']}")
    fig.savefig(path, dpi=100)


# ------------------------------------------------------------------------------------------------ CLI
def add_parser(sub) -> None:
    from .cli import add_dtype_arg

    p = sub.add_parser("evaluate", help="measure how faithfully samples reproduce their representation",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="pipeline directory or shipped model name (default: the shipped CIFAR-10 backbone model)")
    p.add_argument("--data", required=True,
                   help="reference images: file.npz[:split] (a bare .npz means its test split), an image folder, "
                        "or torchvision:NAME:ROOT[:split]")
    p.add_argument("--num-images", type=int, default=200, help="references: the first N readable items (default: 200)")
    p.add_argument("--samples-per-image", type=int, default=1,
                   help="K samples per reference; ranks are averaged over all K; diversity needs K >= 2 (default: 1)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default: 50)")
    p.add_argument("--scheduler", default="ddim", choices=["ddpm", "ddim", "dpm++", "unipc"],
                   help="sampler (default: ddim)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale; 1 = conditional only (default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the per-sample noise generators (default: 0)")
    p.add_argument("--judge", default=None,
                   help="encoder spec that scores the samples (rank, FD, diversity, kNN), e.g. dino_resnet50@PATH "
                        "(default: the model's own encoder and layer)")
    p.add_argument("--judge-layer", default="backbone", help="layer of --judge (default: backbone)")
    p.add_argument("--train-data", default=None,
                   help="labelled training data for kNN class agreement: a data spec (train split), or an embedding "
                        "cache from `rcdm embed` made with the judge's encoder and layer (default: skip)")
    p.add_argument("--inception-weights", default=None,
                   help="local Inception-v3 FID weights (pt_inception-2015-12-05); enables Inception FID/KID via "
                        "torchmetrics (default: skip)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="samples per sampler call; affects memory and speed, not results (default: 64)")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, mps (default: auto)")
    add_dtype_arg(p)
    p.add_argument("--out", default="metrics.json", help="output JSON (default: metrics.json)")
    p.add_argument("--summary-png", default=None,
                   help="also write a PNG: rank histogram and example rows of input + samples (default: none)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> None:
    from .cli import load_pipeline
    from .encoders import load_encoder

    pipe = load_pipeline(args.model, args.device, args.dtype)
    judge = load_encoder(args.judge, args.judge_layer, device=pipe.device) if args.judge else None
    metrics = evaluate(pipe, args.data, args.num_images, args.samples_per_image, args.steps, args.scheduler,
                       args.guidance, args.seed, judge, args.train_data, args.batch_size,
                       inception_weights=args.inception_weights, summary_png=args.summary_png)
    metrics["cli"] = {k: v for k, v in vars(args).items() if k != "func"}
    Path(args.out).write_text(json.dumps(metrics, indent=2))
    r = metrics["rank"]
    print(f"wrote {args.out}: mean rank {r['mean']:.2f} of {metrics['num_images']} (chance {r['chance_mean']:.1f}), "
          f"top-1 {r['top1_pct']:.1f}%, FD {metrics['fd']['samples_vs_real']:.3g} "
          f"(real halves {metrics['fd']['real_half_vs_half'] or float('nan'):.3g})")
