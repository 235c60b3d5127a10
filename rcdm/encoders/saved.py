"""How a saved model directory names its encoder: a spec that resolves wherever the directory goes."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..resources import pretrained_root

ENCODER_DIR = "encoder"  # where save_pretrained puts a copy of a local `file:` encoder: the model carries it


def bundle_encoder(spec: str, base, out_dir: Path) -> str:
    """The encoder spec a model saved in `out_dir` records. A local `file:` encoder (relative specs read from `base`)
    is copied into out_dir/encoder/ and named `file:encoder`, relative to the model directory; the shipped one is
    named `pretrained:NAME` instead (it resolves wherever rcdm is installed). Other specs are kept as they are."""
    if not spec.startswith("file:"):
        return spec
    src = (Path(base) / spec[5:]).resolve()  # an absolute spec path stays itself
    weights = src / "model.safetensors" if src.is_dir() else src
    if src.is_dir() and src.parent == pretrained_root().resolve():
        return f"pretrained:{src.name}"
    missing = [f for f in (weights.parent / "config.json", weights) if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot save encoder {spec!r} with the model: {missing[0]} is gone")
    dst = Path(out_dir) / ENCODER_DIR
    dst.mkdir()
    for f in (weights.parent / "config.json", weights, weights.parent / "README.md"):
        if f.is_file():
            shutil.copy2(f, dst / f.name)
    return f"file:{ENCODER_DIR}" if src.is_dir() else f"file:{ENCODER_DIR}/{weights.name}"


def relocate_spec(spec: str, out_dir: Path, base: Path = Path(".")) -> str:
    """Rewrite a relative `file:` spec, read from `base`, so it resolves from the pipeline directory `out_dir`, for
    tools that copy a model directory whole. A spec inside `base` (`file:encoder`) travels with the copy: kept."""
    if not spec.startswith("file:") or os.path.isabs(spec[5:]):
        return spec
    target = (Path(base) / spec[5:]).resolve()
    if target.is_relative_to(Path(base).resolve()):
        return spec
    return "file:" + os.path.relpath(target, Path(out_dir).resolve())
