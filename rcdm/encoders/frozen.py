"""`FrozenEncoder`: a frozen network, its preprocessing and a layer read-out, [0, 1] images -> (B, D) embeddings."""
from __future__ import annotations

import difflib
import hashlib
from dataclasses import asdict, dataclass, replace
from functools import partial
from itertools import chain
from pathlib import Path

import torch
import torch.nn as nn
from torch.func import functional_call

from ..data import open_image
from ..images import INTERPOLATIONS, pil_to_uint8, resize_center_crop, resize_squash
from .vit import pool_tokens, resolve_vit_layer, token_layout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How [0, 1] pixels become the network's input: shorter side to `size` (antialiased `interpolation`), centre
    crop `crop`, map [0, 1] to `pixel_range`, then (x - mean) / std. RCDM's reference fed its encoders [-1, 1]
    pixels: `pixel_range` records such quirks. `fit` "squash" resizes both sides to `size` instead, the aspect ratio
    not kept, as image processors that resize to height x width do (ViT, ViT-MAE, I-JEPA, SigLIP). Configs written
    before `interpolation` and `fit` existed mean bilinear and "crop"."""

    size: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_range: tuple[float, float] = (0.0, 1.0)
    interpolation: str = "bilinear"  # or "bicubic" (DINO's and most ViTs' evaluation resize)
    fit: str = "crop"  # or "squash"

    def __post_init__(self):  # JSON gives lists; keep tuples so configs compare equal after a round trip
        for name in ("mean", "std", "pixel_range"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if len(self.mean) != 3 or len(self.std) != 3 or len(self.pixel_range) != 2:
            raise ValueError(f"Preprocess needs 3 means, 3 stds and a (low, high) pixel range; got {self}")
        if not 0 < self.crop <= self.size:
            raise ValueError(f"Preprocess crop ({self.crop}) must be positive and at most size ({self.size})")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Preprocess interpolation {self.interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
        if self.fit not in ("crop", "squash"):
            raise ValueError(f"Preprocess fit {self.fit!r} is not 'crop' or 'squash'")

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, crop, crop), resized and centre-cropped. An image already crop x crop is taken as
        preprocessed and returned unchanged (the analyses transform images in this view and hand them back)."""
        if tuple(x.shape[-2:]) == (self.crop, self.crop):
            return x
        return self.apply(x)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W), uint8 or float -> (..., 3, crop, crop): the resize and crop alone."""
        if self.fit == "squash":
            return resize_squash(x, self.size, self.crop, self.interpolation)
        return resize_center_crop(x, self.size, self.crop, self.interpolation)

    def matched(self) -> "Preprocess":
        """The view RCDM's reference gave its encoder: the denoiser's own full short-side centre crop, resized to
        the network's input (`crop`), instead of a resize to `size` and a smaller centre crop (256 -> 224 hides a
        border of 1/16 of the width on each side, which the denoiser still has to draw)."""
        return replace(self, size=self.crop)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**d)


IMAGENET_PREPROCESS = Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD)


class EncoderNet(nn.Module):
    """A trunk with pooled (B, D) output and an optional head on top: the shape every encoder is brought into."""

    def __init__(self, backbone: nn.Module, projector: nn.Module | None = None, random_init: bool = False,
                 no_projector: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.random_init = random_init  # no weights file: every build draws another network
        self.no_projector = no_projector  # why a head the checkpoint has could not be rebuilt exactly


class FrozenEncoder(nn.Module):
    """A frozen network plus its preprocessing and layer read-out: [0, 1] images of any size -> float32 (B, dim).

    Parameters never require grad and the module never leaves eval mode, but `forward` is differentiable with
    respect to its input (adversarial examples need that)."""

    def __init__(self, net: nn.Module, spec: str, layer: str, preprocess: Preprocess):
        super().__init__()
        self.net, self.spec, self.layer, self.preprocess = net, spec, layer, preprocess
        self.random_init = bool(getattr(net, "random_init", False))
        self._layers = _resolve_layers(net, layer, spec)  # [(name, module or None for backbone/projector, pooling)]
        self._need_head = any(name == "projector" or _inside(m, net.projector) for name, m, _ in self._layers)
        self.requires_grad_(False)
        self.train(False)
        self.dim = self._output_dim()

    @torch.no_grad()
    def _output_dim(self) -> int:
        """D from one dry forward, on the meta device when the model allows it: shapes without FLOPs (a 224px
        ResNet-50 pass costs seconds on a busy CPU)."""
        x = torch.zeros(1, 3, self.preprocess.crop, self.preprocess.crop)
        tensors = chain(self.named_parameters(), self.named_buffers())
        meta = {k: torch.empty_like(v, device="meta") for k, v in tensors}
        try:
            return functional_call(self, meta, (x.to("meta"),)).shape[1]
        except (RuntimeError, NotImplementedError):  # an op without a meta kernel, or a plain-tensor attribute
            return self(x.to(self.device)).shape[1]

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def train(self, mode: bool = True):
        """Stays in eval mode whatever is asked: a frozen encoder's BatchNorm statistics must never move."""
        return super().train(False)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1]
        p = self.preprocess
        x = p.view(x01)  # (B, 3, crop, crop)
        lo, hi = p.pixel_range
        mean = torch.tensor(p.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(p.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x * (hi - lo) + lo - mean) / std
        dtype = next(self.net.parameters()).dtype  # a pipeline may have cast the encoder to half precision
        return self._read_out(x.to(dtype)).float()  # (B, D)

    def _read_out(self, x: torch.Tensor) -> torch.Tensor:
        feats: dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_hook(partial(_store_pooled, feats, name, pool))
                 for name, m, pool in self._layers if m is not None]
        try:
            h = self.net.backbone(x)  # (B, D_backbone)
            z = self.net.projector(h) if self._need_head else None  # (B, D_projector)
        finally:
            for hook in hooks:
                hook.remove()
        feats.update(backbone=h, projector=z)
        missing = [name for name, _, _ in self._layers if feats.get(name) is None]
        if missing:
            raise ValueError(f"{self.spec}: layer(s) {missing} produced no output in the forward pass")
        return torch.cat([feats[name].flatten(1) for name, _, _ in self._layers], dim=1)

    @torch.no_grad()
    def encode(self, images, batch_size: int = 256, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Images (list of PIL images, paths or bytes; or a (B, 3, H, W) tensor in [0, 1]) -> float32 (B, D)."""
        out = [torch.zeros(0, self.dim, device=self.device)]
        for x in self._batches(images, batch_size):
            x = x.to(self.device)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x
            with torch.autocast(self.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out.append(self(x).float())
        return torch.cat(out)

    def _batches(self, images, batch_size):
        from PIL import Image

        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"encode() takes (B, 3, H, W) images in [0, 1]; got shape {tuple(images.shape)}")
            yield from images.split(batch_size)
            return
        if isinstance(images, (Image.Image, str, Path, bytes, bytearray)):
            images = [images]
        images = list(images)
        for i in range(0, len(images), batch_size):
            yield torch.stack([self._load_image(img) for img in images[i : i + batch_size]])

    def _load_image(self, img) -> torch.Tensor:  # -> uint8 (3, crop, crop)
        return self.preprocess.apply(pil_to_uint8(open_image(img)))

    def config(self) -> dict:
        """What a checkpoint records to reload this encoder and check it: JSON-serialisable."""
        return {"spec": self.spec, "layer": self.layer, "dim": self.dim, "preprocess": self.preprocess.to_dict(),
                "fingerprint": self.fingerprint()}

    @torch.no_grad()
    def fingerprint(self) -> str:
        """sha256 of every weight and buffer (name, dtype, shape, bytes), as loaded: one spec whose weights changed
        (a random init, an edited file) gives another fingerprint. 0.06 s for a ResNet-50 (90 MiB) on a 2-core CPU."""
        return state_dict_sha256(self.net.state_dict())


@torch.no_grad()
def state_dict_sha256(state: dict) -> str:
    """sha256 of every tensor of a state dict (name, dtype, shape, bytes), in its order."""
    h = hashlib.sha256()
    for name, t in state.items():
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().data)
    return h.hexdigest()

def random_init_error(spec: str) -> str:
    """Why embeddings of a random-init encoder are refused, and what to do instead."""
    published = "timm:NAME.TAG" if spec.startswith("timm:") else f"{spec}@DEFAULT"
    return (f"encoder {spec!r} has random weights (no weights named or given): a pipeline would rebuild it from "
            f"another random init and condition on a different network. Save its weights and use {spec}@weights.pth "
            f"(torch.save(model.state_dict(), 'weights.pth')), or published weights ({published}).")


def _store_pooled(feats, name, pool, module, inputs, output):
    """Forward hook: pool at once, before any in-place op downstream can change the tensor. `pool` = (how,
    num_prefix) for a ViT's token sequences, None elsewhere (sequences then give their first token)."""
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):  # transformers blocks
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"layer {name!r} returns {type(output).__name__}, not a tensor; pick another module")
    if output.ndim == 4:  # (B, C, H, W) feature map -> global average pool
        output = output.mean(dim=(2, 3))
    elif output.ndim == 3:  # (B, N, C) tokens -> CLS token or patch mean
        output = pool_tokens(output, *(pool or ("cls", 0)))
    feats[name] = output  # (B, C)


def _inside(module, parent) -> bool:
    return module is not None and parent is not None and any(module is m for m in parent.modules())


def _resolve_layers(net, layer: str, spec: str) -> list[tuple[str, nn.Module | None, tuple | None]]:
    """'backbone+layer3' -> [('backbone', None, None), ('layer3', <module>, None)]; names may be relative to the
    trunk. ViT backbones also take 'cls', 'mean' and 'blocks.N' (see `vit`), whose pooling rides along."""
    names = [n.strip() for n in layer.split("+")]
    if not all(names):
        raise ValueError(f"layer {layer!r}: empty name; use e.g. 'backbone', 'projector' or 'backbone+projector'")
    layout = token_layout(net.backbone)
    out = []
    for name in names:
        if name == "projector" and net.projector is None and getattr(net, "no_projector", None):
            raise ValueError(net.no_projector)
        if name == "projector" and net.projector is None:
            raise ValueError(f"{spec}: no projector (head) in this model or checkpoint; use layer 'backbone' or a "
                             "module name (official releases: load the full checkpoint, not the backbone-only file)")
        if name in ("backbone", "projector"):
            out.append((name, None, None))
            continue
        vit = resolve_vit_layer(net, layout, name, spec) if layout else None
        if vit:
            out.append((name, vit[0], (vit[1], layout.num_prefix)))
        else:
            pool = (layout.default_pool, layout.num_prefix) if layout else None
            out.append((name, _find_module(net, name, spec), pool))
    return out


def _find_module(net, name, spec) -> nn.Module:
    for root in (net, net.backbone):
        try:
            return root.get_submodule(name)
        except AttributeError:
            pass
    valid = [n for n, _ in net.named_modules() if n and n.count(".") <= 2]
    close = difflib.get_close_matches(name, valid, n=5)
    raise ValueError(f"{spec}: unknown layer {name!r}. Use 'backbone', 'projector' or a module name"
                     f"{', e.g. ' + ', '.join(close) if close else ''}. Some valid names: {', '.join(valid[:30])}")
