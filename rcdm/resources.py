"""Where the shipped files are: the models, their cards and the example images of `pretrained/`.

A wheel carries them as the package data `rcdm/pretrained/` (setup.py maps the checkout's top-level `pretrained/`
there); an editable install reads the checkout's `pretrained/` beside the package. No torch: the CLI's `--help`
and the app's start-up read this.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def pretrained_root() -> Path:
    """$RCDM_PRETRAINED if set, else the wheel's package data `rcdm/pretrained/`, else the checkout's `pretrained/`
    beside the package (an editable install). The last is returned even when absent, so errors can name it."""
    env = os.environ.get("RCDM_PRETRAINED")
    if env:
        return Path(env)
    packaged = PACKAGE_DIR / "pretrained"
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / "pretrained"
