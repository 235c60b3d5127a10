"""`rcdm evaluate`: how faithfully an RCDM's samples carry the representation they were drawn from.

    rcdm evaluate --model pretrained/rcdm-cifar10-backbone --data cifar10_jpeg.npz:test --num-images 200 \\
        --classifier pretrained/cifar10-judge --out metrics.json --summary-png metrics.png

The first --num-images readable items (from --offset on) are the references. Each is encoded, K samples are drawn
from its embedding with the model's recorded sampler unless flags say otherwise, and the samples are scored: rank,
FD, diversity, kNN class agreement, an independent classifier, optional Inception FID/KID (definitions:
rcdm.metrics; the procedure: rcdm.evaluate). Sample k of item i is seeded by (seed, i, k).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .flags import add_model_flag, add_sampling_flags, sampling_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="measure how faithfully samples reproduce their representation",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flag(p)
    p.add_argument("--data", required=True,
                   help="reference images: file.npz[:split] (a bare .npz means its test split), an image folder, "
                        "or torchvision:NAME:ROOT[:split]")
    p.add_argument("--num-images", type=int, default=200, help="references: the first N readable items (default: 200)")
    p.add_argument("--offset", type=int, default=0,
                   help="start the references at this item of the split, e.g. 5000 for a set disjoint from the "
                        "reported first N (default: 0)")
    add_sampling_flags(p, num_samples=1, what="K samples per reference; ranks average over K, diversity needs K >= 2")
    p.add_argument("--judge", default=None,
                   help="encoder spec that scores the samples (rank, FD, diversity, kNN), e.g. dino_resnet50@PATH "
                        "(default: the model's own encoder and layer)")
    p.add_argument("--judge-layer", default="backbone", help="layer of --judge (default: backbone)")
    p.add_argument("--train-data", default=None,
                   help="labelled training data for kNN class agreement: a data spec (train split), or an embedding "
                        "cache from `rcdm embed` made with the judge's encoder and layer (default: skip)")
    p.add_argument("--classifier", default=None,
                   help="an independent classifier (rcdm.judge), e.g. pretrained/cifar10-judge: adds its accuracy on "
                        "samples vs on their sources, and FD in its features (samples vs sources, beside the next "
                        "N real images vs the sources) under \"classifier\" (default: skip)")
    p.add_argument("--inception-weights", default=None,
                   help="local Inception-v3 FID weights (pt_inception-2015-12-05); enables Inception FID/KID via "
                        "torchmetrics (default: skip)")
    p.add_argument("--out", default="metrics.json", help="output JSON (default: metrics.json)")
    p.add_argument("--summary-png", default=None,
                   help="also write a PNG: rank histogram and example rows of input + samples (default: none)")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..encoders import load_encoder
    from ..evaluate import evaluate
    from ..flags import load_pipeline
    from ..judge import load_judge

    spec = sampling_from_args(args)  # checked before any model is loaded
    pipe = load_pipeline(args.model, args.device, args.dtype)
    judge = load_encoder(args.judge, args.judge_layer, device=pipe.device) if args.judge else None
    classifier = load_judge(args.classifier, pipe.device) if args.classifier else None
    metrics = evaluate(pipe, args.data, args.num_images, spec, judge, args.train_data,
                       inception_weights=args.inception_weights, summary_png=args.summary_png, offset=args.offset,
                       classifier=classifier)
    metrics["cli"] = {k: v for k, v in vars(args).items() if k != "func"}
    Path(args.out).write_text(json.dumps(metrics, indent=2))
    r = metrics["rank"]
    print(f"wrote {args.out}: mean rank {r['mean']:.2f} of {metrics['num_images']} (chance {r['chance_mean']:.1f}), "
          f"top-1 {r['top1_pct']:.1f}%, FD {metrics['fd']['samples_vs_real']:.3g} "
          f"(real halves {metrics['fd']['real_half_vs_half'] or float('nan'):.3g})")
    if "accuracy_samples" in metrics["classifier"]:
        c = metrics["classifier"]
        print(f"classifier: {100 * c['accuracy_samples']:.1f}% of samples show their source's class (sources: "
              f"{100 * c['accuracy_sources']:.1f}%), FD {c['fd']:.3g} (real vs real {c['fd_real'] or float('nan'):.3g})")
