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
    torchvision's, so PIL and tensor inputs agree; "box-bicubic" follows guided-diffusion's `center_crop_arr`
    instead (`_center_crop_arr`)."""
    crop = crop or size
    if interpolation == "box-bicubic":
        return _center_crop_arr(x, size, crop)
    x = TF.resize(x, size, interpolation=INTERPOLATIONS[interpolation], antialias=True)
    return TF.center_crop(x, [crop, crop]).contiguous()  # strided crop views make convs ~50x slower


def resize_squash(x: torch.Tensor, size: int, crop: int | None = None,
                  interpolation: str = "bilinear") -> torch.Tensor:
    """(..., C, H, W) -> (..., C, crop, crop): both sides to `size`, the aspect ratio not kept (image processors that
    resize straight to height x width, e.g. ViTImageProcessor), then a centre crop of side `crop` (default: none)."""
    x = TF.resize(x, [size, size], interpolation=INTERPOLATIONS[interpolation], antialias=True)
    return TF.center_crop(x, [crop or size] * 2).contiguous()


def _center_crop_arr(x: torch.Tensor, size: int, crop: int) -> torch.Tensor:
    """guided-diffusion's `center_crop_arr` (RCDM's data loader): PIL BOX halving while the short side is at least
    2 * size, PIL BICUBIC to a short side of `size` with the long side round(long * size / short), then a crop at
    offset (side - crop) // 2. uint8 images go through PIL itself (exact); float images take the same sizes and
    offsets in torch (differentiable; within a grey level of PIL)."""
    if x.dtype == torch.uint8:
        flat = x.reshape(-1, *x.shape[-3:])
        out = torch.stack([pil_to_uint8(_pil_center_crop_arr(to_pil(img)[0], size, crop)) for img in flat])
        return out.reshape(*x.shape[:-2], crop, crop)
    x = _halve_while_large(x, size)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = TF.resize(x, [round(h * scale), round(w * scale)], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    top, left = (x.shape[-2] - crop) // 2, (x.shape[-1] - crop) // 2
    return x[..., top:top + crop, left:left + crop].clamp(0, 1).contiguous()  # PIL clips its overshoot


def _pil_center_crop_arr(img: Image.Image, size: int, crop: int) -> Image.Image:
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    left, top = (img.size[0] - crop) // 2, (img.size[1] - crop) // 2
    return img.crop((left, top, left + crop, top + crop))


def _halve_while_large(x: torch.Tensor, size: int) -> torch.Tensor:
    """PIL's BOX reduction to half size (rounded down) while the short side is >= 2 * size: 2x2 averages, the box
    stretched a little over odd sides (torch's area interpolation)."""
    while min(x.shape[-2:]) >= 2 * size:
        lead = x.shape[:-3]
        x = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=[s // 2 for s in x.shape[-2:]], mode="area")
        x = x.reshape(*lead, *x.shape[-3:])
    return x


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
