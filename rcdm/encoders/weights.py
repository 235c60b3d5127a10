"""Reading weight files safely (safetensors, or torch pickles with weights_only=True) and loading them strictly."""
from __future__ import annotations

import argparse
import importlib
import pickle
import warnings
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .online import check_url, torch_hub_file


def _training_filter_stand_in(p):
    """Stands in for `exclude_bias_and_norm`, which the VICReg and Barlow Twins training scripts pickle (as
    `__main__.exclude_bias_and_norm`) inside their full checkpoints' optimizer state. Only tensors are used."""
    raise RuntimeError("stand-in for a training-script function; never called")


# Globals the official full checkpoints contain besides tensors: DINO stores its argparse `args`.
_SAFE_GLOBALS = [argparse.Namespace, (_training_filter_stand_in, "__main__.exclude_bias_and_norm")]


def _safe_load(load: Callable, what) -> dict:
    """Run a torch.load-style call with weights_only=True: tensors and plain containers only, never code."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol N": a damaged file, said below
            return load(map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _pickle_error_detail(e)
        if "GLOBAL" not in detail:
            raise ValueError(f"{what}: not a readable PyTorch checkpoint ({detail}); it is damaged or another kind of "
                             "file: download or save it again") from None
        raise ValueError(f"{what}: refused to unpickle it; it holds Python objects besides tensors, and loading "
                         "those could run arbitrary code (torch.load weights_only=True). Re-save its state_dict in a "
                         f"trusted environment or convert it to safetensors. Detail: {detail}") from None


def _pickle_error_detail(e: Exception) -> str:
    """What torch's long weights_only error says about this file ('Unsupported global: GLOBAL ...', 'Unsupported
    operand 142'): the text after "WeightsUnpickler error:" (or the line after it), else a line naming a GLOBAL."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error:" in ln:
            rest = ln.split("WeightsUnpickler error:", 1)[1].strip()
            return (rest or (lines[i + 1] if i + 1 < len(lines) else ""))[:300] or type(e).__name__
    named = [ln for ln in lines if "GLOBAL" in ln]
    return ((named or lines or [type(e).__name__])[0])[:300]


def first_line(e: BaseException) -> str:
    """An exception's first sentence, on one short line (some have none: an EOFError from an empty pickle)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0].split(". ")[0].rstrip(".")[:200] if lines else "") or type(e).__name__


def import_extra(module: str, extra: str):
    """An optional dependency, or an ImportError that names the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this encoder needs {module}: pip install 'rcdm[{extra}]'") from None


def read_weights(path: Path):
    """A safetensors file, or a torch pickle loaded with weights_only=True, told apart by their first bytes. An
    empty, cut-short or foreign file is a one-line ValueError that names it."""
    path = Path(path)
    if sniff(path) == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError: header too small / too large / file not fully covered
            raise ValueError(f"{path}: a safetensors file that cannot be read ({first_line(e)}); it is probably "
                             "truncated: download or save it again") from None
    try:
        return _safe_load(partial(torch.load, path), path)
    except (RuntimeError, OSError, EOFError, KeyError, IndexError) as e:  # a cut zip or pickle
        raise ValueError(f"{path}: a PyTorch checkpoint that cannot be read ({first_line(e)}); it is probably "
                         "truncated: download or save it again") from None


def sniff(path: Path) -> str:
    """'torch' (a zip archive, or a pickle: protocol 2+ starts with 0x80) or 'safetensors' (an 8-byte header
    length, then a JSON header)."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes); download or save it again")
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if head[8:9] == b"{":  # before the pickle test: a header length such as 0x2f80 also starts with 0x80
        return "safetensors"
    if head.startswith(b"\x80"):
        return "torch"
    raise ValueError(f"{path}: neither a PyTorch checkpoint (zip or pickle) nor a safetensors file (it starts with "
                     f"{head[:8]!r}); it is damaged or another kind of file: pass the weights file, downloaded or "
                     "saved again")


def download_weights(url: str, spec: str):
    """A public checkpoint through torch hub's cache; offline and not cached: one line at once."""
    name, _, _ = spec.partition("@")
    check_url(spec, url, torch_hub_file(url), f"use {name}@FILE (or put it in that cache)")
    return _safe_load(partial(torch.hub.load_state_dict_from_url, url), url)


def resolve_weights_path(p: str, base_dir: Path | None, spec: str) -> Path:
    """A weights path of a spec: `~` expanded, relative to `base_dir` (else the working directory), and present."""
    path = Path(p).expanduser()
    path = path if path.is_absolute() else (base_dir or Path.cwd()) / path
    if not path.exists():
        raise FileNotFoundError(f"{spec}: {path} does not exist")
    return path


def load_strict(net: nn.Module, state: dict, spec: str):
    """load_state_dict with every key accounted for and every shape checked, failing in one line that names a few
    offending keys (torch's own report lists every mismatch: up to hundreds of lines)."""
    own = net.state_dict()
    wrong = [f"{k} {tuple(v.shape)} in the file vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{spec}: {len(wrong)} tensors do not fit the architecture, e.g. {'; '.join(wrong[:2])}. "
                         "Is the file for another width or depth? Check the ARCH/NAME in the spec")
    res = net.load_state_dict(state, strict=False)  # strict=False only to report both lists ourselves
    if res.missing_keys or res.unexpected_keys:
        raise ValueError(f"{spec}: checkpoint keys do not match the expected layout; "
                         f"missing {few_keys(res.missing_keys)}, unexpected {few_keys(res.unexpected_keys)}")


def few_keys(keys, n=4):
    """The first `n` keys, and how many more there are: for one-line error messages."""
    keys = list(keys)
    return f"{keys[:n]}{f' (+{len(keys) - n} more)' if len(keys) > n else ''}"


def drop_prefixes(state: dict, prefixes) -> dict:
    """`state` without the keys that start with any of `prefixes`."""
    return {k: v for k, v in state.items() if not k.startswith(tuple(prefixes))}
