"""Batched image augmentations on tensors: the random views of SSL pretraining (`simclr_views`) and the named,
fixed-strength augmentations of the invariance analysis (`augment(name, x)`, names in rcdm.choices.AUGMENTATIONS).

Per-sample PIL transforms cost more than the network on 2 CPU cores, so every augmentation here acts on a whole
(B, 3, H, W) batch in [0, 1] at once, with per-sample random parameters where it has any.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from .choices import AUGMENTATIONS

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = torch.tensor([0.299, 0.587, 0.114])
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) plane; the invariance analysis reads chroma with RGB2YIQ.
RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(RGB2YIQ)


def _uniform(b, lo, hi, device):
    return torch.empty(b, device=device).uniform_(lo, hi)


def grayscale(x):
    """(B, 3, H, W) -> (B, 3, H, W) with equal channels."""
    g = torch.einsum("bchw,c->bhw", x, _LUMA.to(x)).unsqueeze(1)  # (B, 1, H, W)
    return g.expand_as(x)


def random_resized_crop(x, size, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5):
    """Random crop of relative area `scale` and aspect `ratio`, resized to `size`, with a random horizontal flip.

    One `affine_grid` + `grid_sample` call for the whole batch.
    """
    b, dev = x.shape[0], x.device
    area = _uniform(b, *scale, dev)
    aspect = torch.exp(_uniform(b, math.log(ratio[0]), math.log(ratio[1]), dev))
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the width
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, device=dev) * (1 - w) + w / 2) * 2 - 1  # centre in [-1, 1]
    cy = (torch.rand(b, device=dev) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(torch.rand(b, device=dev) < flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1):
    """torchvision ColorJitter semantics with per-sample factors, in a fixed order."""
    b, dev = x.shape[0], x.device
    per = lambda lo, hi: _uniform(b, lo, hi, dev).view(b, 1, 1, 1)  # noqa: E731
    x = x * per(1 - brightness, 1 + brightness)
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * per(1 - contrast, 1 + contrast) + mean
    g = grayscale(x)
    x = (x - g) * per(1 - saturation, 1 + saturation) + g
    return hue_shift(x.clamp(0, 1), _uniform(b, -hue, hue, dev)).clamp(0, 1)


def hue_shift(x, turns):
    """Rotate hue by `turns` (B,) of a full circle, as a rotation in YIQ space."""
    a = turns * 2 * math.pi
    cos, sin, one, zero = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    rot = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=1).view(-1, 3, 3)  # (B, 3, 3)
    m = _YIQ2RGB.to(x) @ rot.to(x) @ RGB2YIQ.to(x)  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)


def _apply_with_prob(x, fn, p):
    mask = (torch.rand(x.shape[0], device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(mask, fn(x), x)


def simclr_views(x, size):
    """One SimCLR view per image (Chen et al. 2020, CIFAR recipe: no blur)."""
    x = random_resized_crop(x, size)
    x = _apply_with_prob(x, color_jitter, 0.8)
    return _apply_with_prob(x, grayscale, 0.2)


# ------------------------------------------------------------------------------------------------ named
@dataclass(frozen=True)
class AugmentParams:
    """The fixed strength of each named augmentation (rcdm.analysis.invariance describes each)."""

    crop_frac: float = 0.5      # side of the centre crop, as a fraction of the image side
    hue_turns: float = 0.25     # hue rotation, in turns of the colour circle
    rotation_deg: float = 90.0  # rotation angle in degrees
    blur_sigma: float = 0.04    # Gaussian sigma, as a fraction of the image side


def augment(name: str, x: torch.Tensor, p: AugmentParams = AugmentParams()) -> torch.Tensor:
    """Apply augmentation `name` to (B, 3, S, S) images in [0, 1], deterministically."""
    s = x.shape[-1]
    if name == "flip":
        return x.flip(-1)
    if name == "crop":
        c = max(1, round(s * p.crop_frac))
        o = (s - c) // 2
        return F.interpolate(x[..., o:o + c, o:o + c], size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)
    if name == "hue":
        return hue_shift(x, torch.full((len(x),), p.hue_turns, device=x.device)).clamp(0, 1)
    if name == "grayscale":
        return grayscale(x).contiguous()
    if name == "rotation":
        return _rotate(x, p.rotation_deg)
    if name == "blur":
        sigma = p.blur_sigma * s
        return TF.gaussian_blur(x, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)
    raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTATIONS)}")


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3).to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
