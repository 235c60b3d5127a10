"""A small self-supervised encoder for CIFAR-sized images: ResNet-18 with a CIFAR stem, SimCLR objective.

No SSL weights can be downloaded here, so the default models' encoder is trained with this recipe:

    rcdm pretrain --data cifar10_jpeg.npz --test-data cifar10_jpeg.npz:test --out DIR --minutes 40

The result is a directory (config.json + model.safetensors) that the encoder registry loads as `file:DIR`.
"""
from __future__ import annotations

import argparse
import json

from ..ssl_config import SSLConfig
from .flags import add_dataclass_args


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="train a small SimCLR encoder for CIFAR-sized images",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, SSLConfig)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..config import dataclass_from_args
    from ..ssl import train_ssl

    print(json.dumps(train_ssl(dataclass_from_args(SSLConfig, args)), indent=2))


def main(argv=None):
    """`python -m rcdm.ssl ...` (and `-m rcdm.cli.pretrain`)."""
    p = argparse.ArgumentParser(prog="python -m rcdm.ssl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, SSLConfig)
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
