"""Crash-safe file-system writes: build in a temporary path, then rename into place."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def fresh_tmp_dir(out: str | Path) -> Path:
    """An empty sibling directory `<out>.tmp` to build `out` in."""
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def keep_foreign_files(old: str | Path, new: str | Path, owned: set[str]) -> None:
    """Copy the entries of directory `old` that the writer does not own into `new`, before `new` replaces it."""
    old = Path(old)
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if entry.name not in owned:
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, Path(new) / entry.name)


def replace_dir(tmp: str | Path, out: str | Path) -> None:
    """Swap `tmp` into `out`. The old directory is deleted only after the new one is in place, so a crash at
    any point leaves either the old or the new directory complete under one of the two names."""
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)

