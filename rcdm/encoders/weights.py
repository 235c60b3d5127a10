"""Reading weight files safely (safetensors, or torch pickles with weights_only=True) and loading them strictly."""
from __future__ import annotations

import argparse
import importlib
import pickle
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

def _training_filter_stand_in(p):
    """Stands in for `exclude_bias_and_norm`, which the VICReg and Barlow Twins training scripts pickle (as
    `__main__.exclude_bias_and_norm`) inside their full checkpoints' optimizer state. Only tensors are used."""
    raise RuntimeError("stand-in for a training-script function; never called")


# Globals the official full checkpoints contain besides tensors: DINO stores its argparse `args`.
_SAFE_GLOBALS = [argparse.Namespace, (_training_filter_stand_in, "__main__.exclude_bias_and_norm")]


def _safe_load(load: Callable, what) -> dict:
    """Run a torch.load-style call with weights_only=True: tensors and plain containers only, never code."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return load(map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _pickle_error_detail(e)
        if "GLOBAL" not in detail:
            raise ValueError(f"{what}: not a readable PyTorch checkpoint ({detail})") from None
        raise ValueError(f"{what}: refused to unpickle it; it holds Python objects besides tensors, and loading "
                         "those could run arbitrary code (torch.load weights_only=True). Re-save its state_dict in a "
                         f"trusted environment or convert it to safetensors. Detail: {detail}") from None


def _pickle_error_detail(e: Exception) -> str:
    """The line of torch's long weights_only error that says what was refused (e.g. 'Unsupported global: ...')."""
    lines = [ln.strip() for ln in str(e).splitlines() if "WeightsUnpickler error" in ln]
    return lines[0] if lines else str(e).splitlines()[0]


def import_extra(module: str, extra: str):
    """An optional dependency, or an ImportError that names the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this encoder needs {module}: pip install 'rcdm[{extra}]'") from None


def read_weights(path: Path):
    """A .safetensors file, or a torch pickle loaded with weights_only=True."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return _safe_load(partial(torch.load, path), path)


def _download(url: str):
    return _safe_load(partial(torch.hub.load_state_dict_from_url, url), url)


def _resolve_path(p: str, base_dir: Path | None, spec: str) -> Path:
    path = Path(p).expanduser()
    path = path if path.is_absolute() else (base_dir or Path.cwd()) / path
    if not path.exists():
        raise FileNotFoundError(f"{spec}: {path} does not exist")
    return path


def _load_strict(net: nn.Module, state: dict, spec: str):
    """load_state_dict with every key accounted for, failing with the offending keys named."""
    try:
        res = net.load_state_dict(state, strict=False)  # strict=False only to report both lists ourselves
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{spec}: checkpoint tensors do not fit the architecture: {e}") from None
    if res.missing_keys or res.unexpected_keys:
        raise ValueError(f"{spec}: checkpoint keys do not match the expected layout; "
                         f"missing {_few(res.missing_keys)}, unexpected {_few(res.unexpected_keys)}")


def _few(keys, n=6):
    return f"{list(keys[:n])}{f' (+{len(keys) - n} more)' if len(keys) > n else ''}"


def _without(state: dict, prefixes) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(tuple(prefixes))}
