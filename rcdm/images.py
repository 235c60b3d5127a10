"""Image tensors in and out: the one resize/centre-crop and the one tensor -> PIL path of the package."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

INTERPOLATIONS = {"bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC,
                  # guided-diffusion's `center_crop_arr` (RCDM's data loader): halve with 2x2 box averaging while the
                  # short side is at least twice the target, then bicubic
                  "box-bicubic": TF.InterpolationMode.BICUBIC}


def resize_center_crop(x: torch.Tensor, size: int, crop: int | None = None,
                       interpolation: str = "bilinear") -> torch.Tensor:
    """(..., C, H, W) -> (..., C, crop, crop): shorter side to `size` (antialiased), then a centre crop of side
    `crop` (default: `size`). uint8 stays uint8 (rounded); floats stay differentiable. Sizes and crop offsets are
    torchvision's, so PIL and tensor inputs agree."""
    crop = crop or size
    if interpolation == "box-bicubic":
        x = _halve_while_large(x, size)
    x = TF.resize(x, size, interpolation=INTERPOLATIONS[interpolation], antialias=True)
    return TF.center_crop(x, [crop, crop]).contiguous()  # strided crop views make convs ~50x slower


def _halve_while_large(x: torch.Tensor, size: int) -> torch.Tensor:
    """2x2 box averaging (PIL's BOX at half size) while the short side is >= 2 * size; uint8 stays uint8."""
    if min(x.shape[-2:]) < 2 * size:
        return x
    dtype, y = x.dtype, x.float()
    while min(y.shape[-2:]) >= 2 * size:
        y = F.avg_pool2d(y.reshape(-1, *y.shape[-3:]), 2).reshape(*x.shape[:-2], *(s // 2 for s in y.shape[-2:]))
    return y.round().clamp(0, 255).to(dtype) if dtype == torch.uint8 else y.to(dtype)


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 (3, H, W)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def to_uint8(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images -> uint8, rounded as `to_pil` rounds."""
    return (x01 * 255).round().clamp(0, 255).to(torch.uint8)


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) or (3, H, W) images, uint8 or float in [0, 1] -> PIL images (diffusers' `numpy_to_pil`)."""
    x = x.detach().cpu()
    x = x[None] if x.ndim == 3 else x
    x01 = x.float().div(255) if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    return VaeImageProcessor.numpy_to_pil(x01.permute(0, 2, 3, 1).numpy())  # (B, H, W, 3) -> round(255 x)
