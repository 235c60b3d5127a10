"""`rcdm convert-rcdm`: a published RCDM ImageNet-128 checkpoint (facebookresearch/RCDM, CC-BY-NC) as a pipeline.

    rcdm convert-rcdm rcdm_ema_dino_trunk.pt --encoder dino_resnet50@dino_full.pth --layer backbone --out DIR

The result records the encoder, RCDM's preprocessing and schedule, and RCDM's own sampler (`ddpm-linspace`:
guided-diffusion's 100 respaced ancestral steps, x0 clipped); the mapping and its checks: rcdm.convert.
"""
from __future__ import annotations

import argparse
import shlex
import time


def add_parser(sub) -> None:
    p = sub.add_parser("convert-rcdm", help="convert a published RCDM ImageNet-128 checkpoint into a pipeline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the released file, e.g. rcdm_ema_dino_trunk.pt (a guided-diffusion state dict)")
    p.add_argument("--encoder", required=True,
                   help="encoder spec the RCDM was trained on, e.g. dino_resnet50@dino_resnet50_pretrain_full_checkpoint.pth")
    p.add_argument("--layer", default="backbone", choices=["backbone", "projector"],
                   help="backbone for the *_trunk files, projector for the *_head files (default: backbone)")
    p.add_argument("--out", required=True, help="output pipeline directory")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..convert import convert
    from ..pipeline import RCDMPipeline

    t0 = time.time()
    command = shlex.join(["rcdm", "convert-rcdm", args.checkpoint, "--encoder", args.encoder, "--layer", args.layer,
                          "--out", args.out])
    out = convert(args.checkpoint, args.encoder, args.layer, args.out, RCDMPipeline, command)
    print(f"wrote {out} in {time.time() - t0:.1f} s")
