"""The `rcdm` command line. Each subcommand is a thin wrapper over the Python API; heavy imports stay lazy so
`rcdm --help` is instant."""
from __future__ import annotations

import argparse
import sys

from . import __version__


def auto_device(name: str = "auto") -> str:
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="pipeline directory or shipped model name (default: the shipped CIFAR-10 backbone model)")
    p.add_argument("--num-samples", type=int, default=4, help="samples per input image (default: 4)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: the model's recorded choice; 20 if it records none)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale; 1 = conditional only. Above 1 samples agree more with "
                        "the representation but vary less (default: the model's recorded choice; 1 if none)")
    p.add_argument("--scheduler", default=None, choices=["ddpm", "ddim", "dpm++", "unipc"],
                   help="sampler (default: the one recorded in the model)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, mps (default: auto)")
    add_dtype_arg(p)


DTYPES = ("float32", "bfloat16", "float16")


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="denoiser precision while sampling; the encoder stays float32. bfloat16 is about 2x faster "
                        "on recent CPUs and GPUs; float16 needs a GPU (default: float32)")


def load_pipeline(model, device: str, dtype: str = "float32", scheduler: str | None = None):
    """The pipeline for a CLI command: resolved device, denoiser cast to `dtype` (checked before loading)."""
    import torch

    from .pipeline import RCDMPipeline

    device = auto_device(device)
    if dtype == "float16" and torch.device(device).type == "cpu":
        raise ValueError("--dtype float16 needs a GPU (CPU float16 kernels are slow or missing); "
                         "use --dtype bfloat16 on the CPU")
    pipe = RCDMPipeline.from_pretrained(model, device=device, scheduler=scheduler)
    return pipe.to(dtype=getattr(torch, dtype)) if dtype != "float32" else pipe


def cmd_sample(args) -> None:
    import torch

    from .data import open_image
    from .schedulers import scheduler_name
    from .viz import image_grid, sample_rows

    inputs = [open_image(p) for p in args.image]  # fail on a bad file before loading any model
    pipe = load_pipeline(args.model, args.device, args.dtype, args.scheduler)
    g = torch.Generator(pipe.device).manual_seed(args.seed)
    out = pipe(images=inputs, num_samples=args.num_samples, num_inference_steps=args.steps,
               guidance_scale=args.guidance, generator=g)
    grid = image_grid(sample_rows(inputs, out.images, args.num_samples), upscale=args.upscale)
    grid.save(args.out)
    steps, guidance = pipe.resolve_sampling(args.steps, args.guidance)
    print(f"wrote {args.out}: {len(inputs)} row(s) of input + {args.num_samples} samples "
          f"({scheduler_name(pipe.scheduler)}, {steps} steps, guidance {guidance:g})")


def _sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample images from the embeddings of input images",
                       description="Sample images that share an input's representation. Writes a grid: one row "
                                   "per input, the input first, then its samples.")
    p.add_argument("--image", nargs="+", required=True, metavar="IMG", help="input image file(s)")
    _add_sampling_args(p)
    p.add_argument("--upscale", type=int, default=2, help="nearest-neighbour upscale of the grid (default: 2)")
    p.add_argument("--out", default="grid.png", help="output PNG (default: grid.png)")
    p.set_defaults(func=cmd_sample)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rcdm", description="Representation-conditional diffusion models: see what a "
                                "frozen self-supervised representation keeps about an image.")
    p.add_argument("--version", action="version", version=f"rcdm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _sample_parser(sub)
    for module in _SUBCOMMAND_MODULES:
        __import__(f"rcdm.{module}", fromlist=["add_parser"]).add_parser(sub)
    return p


# Modules that contribute a subcommand through `add_parser(subparsers)`; each keeps its heavy imports inside.
_SUBCOMMAND_MODULES: list[str] = ["ssl", "cache", "train", "appcmd", "evaluate", "analysis"]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, OSError, ArithmeticError) as e:  # bad input: one clear line, no traceback
        print(f"rcdm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
