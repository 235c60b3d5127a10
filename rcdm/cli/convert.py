"""The published RCDM ImageNet-128 checkpoints (facebookresearch/RCDM, CC-BY-NC) as rcdm pipelines.

    rcdm convert-rcdm rcdm_ema_dino_trunk.pt --encoder dino_resnet50@dino_full.pth --layer backbone --out DIR
    RCDMPipeline.from_pretrained("rcdm-imagenet128-dino-trunk")      # online: download, convert once, load
    RCDMPipeline.from_pretrained("rcdm-imagenet128-dino-trunk@rcdm_ema_dino_trunk.pt")   # a local copy instead

Each file is a plain state dict of guided-diffusion's `UNetModel` (RCDM's fork, `instance_cond=True`). Conversion
maps every tensor onto `rcdm.adm.ADMUNet` exactly once, checking every shape; the result is a self-describing
pipeline directory that records the encoder, RCDM's preprocessing (224 centre crop of the short side, pixels in
[-1, 1], no ImageNet mean/std; the UNet sees the 128 centre crop), the schedule (linear, 1000 steps, learned
range) and 100 ancestral steps as its default sampler, as the reference samples.
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
