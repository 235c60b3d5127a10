"""Reading one image: any path, bytes or PIL image -> 8-bit RGB, with a clear `ImageError` for anything unusable.
Every source of `rcdm.data` decodes through here."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


# Pillow's decompression-bomb guard stays on: a huge upload raises instead of eating all memory.
Image.MAX_IMAGE_PIXELS = 64_000_000
MAX_SIDE = 4096  # images larger than this are downsized before anything else touches them


class ImageError(ValueError):
    """An input that is not a usable image. The message names the input and the reason."""


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """Any PIL mode (RGBA, LA, P, L, I;16, I, F, CMYK) -> 8-bit RGB, downsized if huge."""
    try:
        img.load()
    except (OSError, SyntaxError) as e:  # truncated or corrupt data surfaces here, not at open()
        raise ImageError(f"{name}: could not decode image data ({e}). Is the file complete?") from e
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grayscale: rescale to 8 bit by the actual range instead of clipping at 255.
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        img = Image.fromarray(a.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # composite on white, not on black
        img = Image.alpha_composite(bg, rgba)
    img = img.convert("RGB")
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
    return img


def open_image(src, name: str | None = None) -> Image.Image:
    """Open a path, bytes or PIL image as RGB, with a clear `ImageError` on anything unusable."""
    if isinstance(src, Image.Image):
        return to_rgb(src, name or "image")
    name = name or (str(src) if not isinstance(src, (bytes, bytearray)) else "image bytes")
    if not isinstance(src, (bytes, bytearray)) and not Path(src).is_file():
        raise ImageError(f"{name}: no such file.")
    try:
        img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image is too large ({e}).") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: not a readable image file ({type(e).__name__}: {e}).") from e
    return to_rgb(img, name)
