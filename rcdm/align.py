"""Representation alignment (REPA: Yu et al. 2024, "Representation Alignment for Generation").

REPA adds to the diffusion loss a term that pulls an intermediate feature map of the denoiser, passed through a
small projector, towards the frozen encoder's spatial features of the clean image: the mean over locations of
1 - cos(proj(d_t)[:, :, y, x], f(x0)[:, :, y, x]) (their Eq. 8, with cosine similarity as the per-patch sim).
Here the frozen encoder is the conditioning encoder itself, already loaded for the run, so the targets cost one
extra forward of a network far smaller than the denoiser.

    target = SpatialTarget(encoder, "backbone.layer4")      # (B, 3, R, R) in [-1, 1] -> (B, C, h, w)
    loss = alignment_loss(unet_out.align, target(x0))
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


class SpatialTarget:
    """The frozen encoder's feature map at module `layer` for denoiser inputs x0 in [-1, 1]: (B, C, h, w)."""

    def __init__(self, encoder, layer: str):
        self.encoder, self.layer = encoder, layer
        try:
            self.module = encoder.net.get_submodule(layer)
        except AttributeError:
            names = [n for n, m in encoder.net.named_modules() if n and len(list(m.children())) > 0][:12]
            raise ValueError(f"--repa-layer {layer!r}: the encoder {encoder.spec} has no such module; pick a "
                             f"module whose output is a (B, C, h, w) map, e.g. one of {names}") from None
        self.channels = self(torch.zeros(1, 3, encoder.preprocess.crop, encoder.preprocess.crop,
                                         device=encoder.device)).shape[1]

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        out = {}
        hook = self.module.register_forward_hook(lambda m, args, output: out.__setitem__("map", output))
        try:
            self.encoder((x0.float() + 1) / 2)  # the encoder's own resize, crop and normalisation
        finally:
            hook.remove()
        fmap = out.get("map")
        if not isinstance(fmap, torch.Tensor) or fmap.ndim != 4:
            shape = tuple(fmap.shape) if isinstance(fmap, torch.Tensor) else type(fmap).__name__
            raise ValueError(f"--repa-layer {self.layer!r} of {self.encoder.spec} gives {shape}, not a (B, C, h, w) "
                             "feature map; pick a convolutional stage (e.g. backbone.layer4 of a ResNet)")
        return fmap.float()


def projector(channels: int, target_channels: int, hidden: int | None = None) -> nn.Sequential:
    """REPA's projector h_phi: a per-location MLP (1x1 convolutions) from the denoiser's width to the encoder's."""
    hidden = hidden or 2 * channels
    return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, target_channels, 1))


def alignment_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over images and locations of 1 - cos(pred, target); the finer map is average-pooled to the coarser."""
    size = min(pred.shape[-1], target.shape[-1])
    pred, target = F.adaptive_avg_pool2d(pred.float(), size), F.adaptive_avg_pool2d(target.float(), size)
    cos = F.cosine_similarity(rearrange(pred, "b c h w -> b (h w) c"), rearrange(target, "b c h w -> b (h w) c"),
                              dim=-1)  # (B, h*w)
    return (1 - cos).mean()
