"""The `rcdm` command line: one module per command, each with `add_parser(subparsers)` and `run(args)`.

Building the parser imports neither torch nor diffusers, so `rcdm --help` and `rcdm CMD --help` are instant: each
command imports the library inside `run`. Flag groups that several commands share are in `flags`.
"""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import analyze, app, convert, embed, evaluate, posthoc_ema, pretrain, report, sample, train, train_prior

COMMANDS = (sample, pretrain, embed, train, posthoc_ema, app, evaluate, analyze, convert, train_prior, report)  # --help order


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rcdm", description="Representation-conditional diffusion models: see what a "
                                "frozen self-supervised representation keeps about an image.")
    p.add_argument("--version", action="version", version=f"rcdm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, OSError, ArithmeticError, ImportError) as e:  # bad input: one clear line, no traceback
        print(f"rcdm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
