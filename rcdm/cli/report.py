"""`rcdm report`: one command, one static page that answers "what does this representation keep?"."""
from __future__ import annotations

import argparse
import shlex
import sys

from ..choices import AUGMENTATIONS
from ..report.settings import ReportSettings
from .flags import add_model_flag, add_sampling_flags, set_default

DESCRIPTION = """Write DIR/index.html (one static page: open it from disk), its figures as PNG and DIR/report.json
(every number on the page) for one model or several side by side: fidelity, samples, invariance profile,
interpolation, manipulation, memorization (Déjà vu, when the data has a train split) and the comparison.
Deterministic for a seed. Finished sections are kept in DIR/sections/, so an interrupted run, rerun with the
same command, skips them. The defaults take under 10 minutes for the two shipped models on 2 CPU cores
(bfloat16 sampling).

  rcdm report --model rcdm-cifar10-backbone rcdm-cifar10-projector --data cifar10_jpeg.npz --out report/
"""


def add_parser(sub) -> None:
    d = ReportSettings()
    p = sub.add_parser("report", help="one static HTML page of everything rcdm measures, for one model or several",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flag(p, many=True)
    p.add_argument("--data", required=True,
                   help="data spec: file.npz (test split = references, train split = bank and memorization), an "
                        "image folder (no train split: class agreement and memorization say so) or "
                        "torchvision:NAME:ROOT")
    p.add_argument("--out", required=True, help="output directory (created; finished sections in it are reused)")
    p.add_argument("--num-images", type=int, default=d.num_images,
                   help=f"fidelity references: the first N test items (default: {d.num_images})")
    p.add_argument("--invariance-images", type=int, default=d.invariance_images,
                   help=f"images for the invariance profile (default: {d.invariance_images})")
    p.add_argument("--memorization-images", type=int, default=d.memorization_images,
                   help=f"images per split for memorization (default: {d.memorization_images})")
    p.add_argument("--bank-size", type=int, default=d.bank_size,
                   help=f"labelled train embeddings for kNN labels and neighbours (default: {d.bank_size})")
    p.add_argument("--classifier", default=None,
                   help="an independent classifier for the fidelity section, e.g. pretrained/cifar10-judge: the "
                        "share of samples it labels with their source's class, and FD in its features "
                        "(default: none)")
    p.add_argument("--augmentations", nargs="+", default=list(AUGMENTATIONS), choices=list(AUGMENTATIONS),
                   help="augmentations of the invariance profile (default: all)")
    add_sampling_flags(p, num_samples=d.samples_per_image, what="fidelity: K samples per reference (diversity needs 2)")
    set_default(p, "dtype", "bfloat16", "denoiser precision while sampling; the encoder stays float32 "
                                        "(default: bfloat16, about 2x faster than float32 on CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def settings_from_args(args) -> ReportSettings:
    return ReportSettings(num_images=args.num_images, samples_per_image=args.num_samples,
                          invariance_images=args.invariance_images, memorization_images=args.memorization_images,
                          bank_size=args.bank_size, seed=args.seed, steps=args.num_inference_steps,
                          scheduler=args.scheduler, guidance=args.guidance_scale, batch_size=args.batch_size,
                          classifier=args.classifier)


def run(args) -> None:
    from pathlib import Path

    from ..flags import load_pipeline
    from ..pipeline import resolve_model_path
    from ..report.build import build_report
    from ..report.settings import parse_models

    settings = settings_from_args(args)  # checked before any model is loaded
    models = parse_models(args.model)
    paths = {name: resolve_model_path(path) for name, path in models.items()}
    pipes = {name: load_pipeline(path, args.device, args.dtype) for name, path in paths.items()}
    given = sys.argv[1:] if sys.argv[1:2] == ["report"] else ["report", *_argv(args)]  # main(argv) in tests
    command = "rcdm " + shlex.join(given)
    report = build_report(pipes, args.data, args.out, settings, {n: str(p) for n, p in paths.items()}, command,
                          tuple(args.augmentations), progress=not args.quiet)
    print(f"wrote {Path(args.out) / 'index.html'} and report.json ({report['timing']['total_seconds']:.0f} s of "
          "section time)")


def _argv(args) -> list[str]:
    """The flags as given, rebuilt from the parsed arguments (the command line, when not run as `rcdm`)."""
    out = []
    for k, v in vars(args).items():
        if k in ("func", "command") or v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else [flag, *map(str, v)] if isinstance(v, list) else [flag, str(v)]
    return out
