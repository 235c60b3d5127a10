"""What the flags every command shares mean at run time: the device, the denoiser's dtype and the loaded
pipeline. The flags themselves are in `rcdm.cli.flags`; the app and the benchmarks call these too.

Torch-free at import (torch loads inside the functions), so the command line can offer `DTYPES` as choices.
"""
from __future__ import annotations

DTYPES = ("float32", "bfloat16", "float16")


def auto_device(name: str = "auto") -> str:
    """`auto` -> cuda, else mps, else cpu; any other name is returned as is."""
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def load_pipeline(model, device: str = "auto", dtype: str = "float32", scheduler: str | None = None):
    """The pipeline for a command: resolved device, denoiser cast to `dtype` (checked before loading)."""
    import torch

    from .pipeline import RCDMPipeline  # torch-free at import: the command line offers DTYPES as choices

    device = auto_device(device)
    if dtype == "float16" and torch.device(device).type == "cpu":
        raise ValueError("--dtype float16 needs a GPU (CPU float16 kernels are slow or missing); "
                         "use --dtype bfloat16 on the CPU")
    pipe = RCDMPipeline.from_pretrained(model, device=device, scheduler=scheduler)
    return pipe.to(dtype=getattr(torch, dtype)) if dtype != "float32" else pipe
