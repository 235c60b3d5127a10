"""Figures: image grids with the conditioning image first in each row."""
from __future__ import annotations

import torch
from PIL import Image
from torchvision.utils import make_grid

from .images import pil_to_uint8, resize_center_crop, to_pil


def thumbnail(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, centre crop: how the input compares to samples at the model's resolution."""
    return to_pil(resize_center_crop(pil_to_uint8(img), size))[0]


def image_grid(rows: list[list[Image.Image]], pad: int = 2, upscale: int = 1) -> Image.Image:
    """rows of equally sized PIL images -> one PIL grid, row by row (short rows are padded with blanks)."""
    ncol = max(len(r) for r in rows)
    size = rows[0][0].size[::-1]
    tiles = []
    for r in rows:
        tiles += [pil_to_uint8(im) for im in r] + [torch.full((3, *size), 255, dtype=torch.uint8)] * (ncol - len(r))
    grid = make_grid(torch.stack(tiles), nrow=ncol, padding=pad, pad_value=255)  # (3, H, W) uint8
    img = to_pil(grid)[0]
    return img.resize((img.width * upscale, img.height * upscale), Image.NEAREST) if upscale > 1 else img


def sample_rows(inputs: list[Image.Image], samples: list[Image.Image], num_samples: int) -> list[list[Image.Image]]:
    """One row per input: the input as the model sees it, then its samples."""
    size = samples[0].size[0]
    return [[thumbnail(x, size)] + samples[i * num_samples:(i + 1) * num_samples] for i, x in enumerate(inputs)]
