"""Train an RCDM with Accelerate, on one CPU, one GPU or many:

    rcdm train --preset cifar10-32 --data cifar10_jpeg.npz --cache emb.safetensors --output-dir runs/x
    accelerate launch --multi_gpu -m rcdm.train --preset imagenet-128 --data /imagenet/train --cache ...

Reads frozen embeddings from an `rcdm embed` cache, so the encoder never runs during training. Every
`checkpoint_every` steps the full state (model, optimizer, LR schedule, EMA, step) is written to a temporary
directory and renamed into place, so `--resume latest` continues exactly and a crash never corrupts the last
checkpoint. The final export is a `save_pretrained` pipeline with the EMA weights and a model card.

Preemption (SLURM and the like): `--resume auto` continues from the latest checkpoint if there is one and starts
fresh otherwise, so one command serves the first run and every requeue. SIGUSR1 writes a checkpoint at once and
training continues; SIGTERM writes one and exits without the export; SIGINT (Ctrl-C) writes one and exports.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from ..train_config import PRESETS, TrainConfig
from .flags import add_dataclass_args


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, choices=list(PRESETS), help="named preset (default: cifar10-32)")
    p.add_argument("--config", default=None, help="YAML file with TrainConfig fields (overrides the preset)")
    add_dataclass_args(p, TrainConfig, defaults_from_none=True)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train an RCDM on cached embeddings (Accelerate)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(p)
    p.set_defaults(func=run)


def run(args, command: str | None = None) -> None:
    from ..training.loop import per_layer_configs, train
    from ..train_config import load_config

    cfg = load_config(args.preset, args.config, args)
    for run_cfg in per_layer_configs(cfg):
        out = train(run_cfg, command or shlex.join(["rcdm"] + sys.argv[1:]))
        if out is None:  # preempted: the remaining layers wait for the requeued run (--resume auto)
            return
        print(f"exported pipeline to {out}")


def main(argv=None) -> int:
    """Entry point for `accelerate launch -m rcdm.train ...` (and `-m rcdm.cli.train`)."""
    p = argparse.ArgumentParser(prog="rcdm.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(p)
    argv = sys.argv[1:] if argv is None else argv
    try:
        run(p.parse_args(argv), shlex.join(["accelerate", "launch", "-m", "rcdm.train"] + argv))
    except (ValueError, FileNotFoundError, ArithmeticError) as e:
        print(f"rcdm train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
