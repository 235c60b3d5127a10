"""The flag groups every command shares (model, device, dtype, sampling), defined once, and the helpers that turn
them into a loaded pipeline and a `Sampling` spec. Commands import this module, never `rcdm.cli` (the entry point).

Sampling flags default to None, which means "the model's recorded choice" (`Sampling.resolve`), so every command
that samples uses the same sampler, steps and guidance unless told otherwise.
"""
from __future__ import annotations

import argparse

from .schedulers import SCHEDULERS

DTYPES = ("float32", "bfloat16", "float16")


def auto_device(name: str = "auto") -> str:
    """`auto` -> cuda, else mps, else cpu; any other name is returned as is."""
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def add_model_flag(p: argparse.ArgumentParser, many: bool = False, default_help: str | None = None) -> None:
    if many:
        p.add_argument("--model", nargs="+", default=None, metavar="M",
                       help="pipeline directories or shipped model names; each is labelled by its directory name "
                            "(or give NAME=PATH) " + (default_help or "(default: the shipped default model)"))
    else:
        p.add_argument("--model", default=None,
                       help="pipeline directory or shipped model name (default: the shipped CIFAR-10 backbone model)")


def add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="denoiser precision while sampling; the encoder stays float32. bfloat16 is about 2x faster "
                        "on recent CPUs and GPUs; float16 needs a GPU (default: float32)")


def add_sampling_flags(p: argparse.ArgumentParser, num_samples: int, batch_size: bool = True,
                       names: tuple[str, ...] = ("--num-samples",),
                       what: str = "samples per input (per point, per condition)") -> None:
    """--num-samples, --steps, --scheduler, --guidance, --seed (and --batch-size), plus the device flags."""
    p.add_argument(*names, dest="num_samples", type=int, default=num_samples, help=f"{what} (default: {num_samples})")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: the model's recorded choice)")
    p.add_argument("--scheduler", default=None, choices=list(SCHEDULERS),
                   help="sampler (default: the model's recorded choice)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale; 1 = conditional only. Above 1 samples agree more with the "
                        "representation but vary less (default: the model's recorded choice)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the per-sample noise generators (default: 0)")
    if batch_size:
        p.add_argument("--batch-size", type=int, default=64,
                       help="samples per sampler call; memory and speed only, not results (default: 64)")
    add_device_flags(p)


def sampling_from_args(args: argparse.Namespace):
    """The `Sampling` spec the sampling flags describe (None fields: the model's recorded choice)."""
    from .sampling import Sampling

    return Sampling(samples_per_image=args.num_samples, steps=args.steps, scheduler=args.scheduler,
                    guidance=args.guidance, seed=args.seed, batch_size=getattr(args, "batch_size", 64),
                    dtype=args.dtype)


def load_pipeline(model, device: str = "auto", dtype: str = "float32", scheduler: str | None = None):
    """The pipeline for a command: resolved device, denoiser cast to `dtype` (checked before loading)."""
    import torch

    from .pipeline import RCDMPipeline

    device = auto_device(device)
    if dtype == "float16" and torch.device(device).type == "cpu":
        raise ValueError("--dtype float16 needs a GPU (CPU float16 kernels are slow or missing); "
                         "use --dtype bfloat16 on the CPU")
    pipe = RCDMPipeline.from_pretrained(model, device=device, scheduler=scheduler)
    return pipe.to(dtype=getattr(torch, dtype)) if dtype != "float32" else pipe
