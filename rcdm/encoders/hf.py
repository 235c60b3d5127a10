"""`hf:ORG/NAME[@DIR]`: vision transformers from the Hugging Face hub, through transformers.

ORG/NAME is read from the HF cache (or downloaded when online); @DIR reads a local `save_pretrained` directory
instead (config.json, model.safetensors, preprocessor_config.json). The model class follows config.json's
model_type; the preprocessing follows preprocessor_config.json and is recorded in the encoder's config.

`backbone` is the model's own pooled output where it has one (DINOv2: the normed CLS token; CLIP: post-layernorm CLS;
SigLIP: the attention-pool head), else the CLS token (ViT-MAE, ViT) or the patch mean (I-JEPA, and data2vec-vision
with use_mean_pooling, without the fine-tuned pooler's layernorm). `vit` gives cls / mean / blocks.N.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from .frozen import IMAGENET_MEAN, IMAGENET_STD, EncoderNet, Preprocess
from .vit import TokenLayout, pool_tokens
from .weights import _few, _resolve_path, import_extra


@dataclass(frozen=True)
class _Family:
    """How rcdm reads one transformers model type."""

    cls: str  # the transformers class loaded (vision tower only, for CLIP and SigLIP)
    pool: str  # backbone read-out: "pooler" (pooler_output), "cls" or "mean"
    final: str  # module whose output is last_hidden_state; "" = the last block (CLIP)
    has_cls: bool = True
    kwargs: tuple = ()  # from_pretrained overrides


_FAMILIES = {
    "dinov2": _Family("Dinov2Model", "pooler", "layernorm"),
    "dinov2_with_registers": _Family("Dinov2WithRegistersModel", "pooler", "layernorm"),
    # mask_ratio=0: no patch is dropped at encoding time (ViTMAE's default masks 75% at random)
    "vit_mae": _Family("ViTMAEModel", "cls", "layernorm", kwargs=(("mask_ratio", 0.0),)),
    "ijepa": _Family("IJepaModel", "mean", "layernorm", has_cls=False),
    "data2vec-vision": _Family("Data2VecVisionModel", "mean", "layernorm"),
    "clip": _Family("CLIPVisionModel", "pooler", ""),
    "siglip": _Family("SiglipVisionModel", "pooler", "post_layernorm", has_cls=False),
    # DINO v1 and plain ViTs; the pooler is a classification-tuned dense + tanh that self-supervised repos lack
    "vit": _Family("ViTModel", "cls", "layernorm", kwargs=(("add_pooling_layer", False),)),
}
_FAMILIES["clip_vision_model"], _FAMILIES["siglip_vision_model"] = _FAMILIES["clip"], _FAMILIES["siglip"]
# PIL codes or names; the others (nearest, lanczos, box, hamming) read as bicubic, the closest rcdm offers
_RESAMPLE = {2: "bilinear", 3: "bicubic", "bilinear": "bilinear", "bicubic": "bicubic"}


class HFVisionTrunk(nn.Module):
    """A transformers vision model as a (B, 3, H, W) -> (B, D) trunk, with its `token_layout` for the ViT read-outs."""

    def __init__(self, model: nn.Module, family: _Family):
        super().__init__()
        self.model = model
        cfg = model.config
        mean_pooling = getattr(cfg, "use_mean_pooling", family.pool == "mean")  # data2vec-vision's switch
        self.pool = family.pool if family.pool == "pooler" else ("mean" if mean_pooling else "cls")
        self.is_mae = cfg.model_type == "vit_mae"
        blocks = _blocks_path(model)
        final = family.final or f"{blocks}.{len(model.get_submodule(blocks)) - 1}"
        num_prefix = int(family.has_cls) + int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.token_layout = TokenLayout(f"model.{blocks}", f"model.{final}", num_prefix, family.has_cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W), normalised -> (B, D)
        out = self.model(pixel_values=x, **self._mae_noise(x))
        if self.pool == "pooler":
            return out.pooler_output
        return pool_tokens(out.last_hidden_state, self.pool, self.token_layout.num_prefix)  # (B, N, D) -> (B, D)

    def _mae_noise(self, x: torch.Tensor) -> dict:
        """ViTMAE orders patches by argsort(noise) before masking; increasing noise keeps them in place, so the same
        image always gives the same tokens in the same order (with mask_ratio=0 none is dropped)."""
        if not self.is_mae:
            return {}
        p = self.model.config.patch_size
        n = (x.shape[-2] // p) * (x.shape[-1] // p)
        return {"noise": torch.arange(n, device=x.device, dtype=torch.float32).expand(x.shape[0], n)}


def _blocks_path(model: nn.Module) -> str:
    """The ModuleList of transformer blocks: its path moves between transformers versions ('encoder.layer',
    'layers', 'encoder.layers'), its length is the config's num_hidden_layers."""
    depth = model.config.num_hidden_layers
    paths = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if not paths:
        raise ValueError(f"{type(model).__name__}: no list of {depth} transformer blocks found")
    return paths[0]


def _build_hf(spec: str, rest: str, base_dir):
    transformers = import_extra("transformers", "hf")
    repo, _, local = rest.partition("@")
    source = str(_resolve_path(local, base_dir, spec)) if local else repo
    model_type = _fetch(spec, source, lambda: transformers.AutoConfig.from_pretrained(source)).model_type
    family = _FAMILIES.get(model_type)
    if family is None:
        raise ValueError(f"{spec}: model_type {model_type!r} is not supported; hf: reads {sorted(_FAMILIES)}")
    load = partial(getattr(transformers, family.cls).from_pretrained, source, output_loading_info=True,
                   dtype=torch.float32, **dict(family.kwargs))
    with _quiet(transformers):  # its report lists every unexpected key (a CLIP text tower: hundreds); we check below
        model, info = _fetch(spec, source, load)
    _check_loaded(info, family, spec)
    processor = _fetch(spec, source, lambda: _processor_dict(transformers, source))
    return EncoderNet(HFVisionTrunk(model.eval(), family)), hf_preprocess(processor, spec)


@contextmanager
def _quiet(transformers):
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _fetch(spec: str, source: str, load):
    """Run a from_pretrained-style call; a cache miss offline (or no network) becomes one clear line."""
    try:
        return load()
    except OSError as e:
        raise OSError(f"{spec}: cannot read {source!r} ({str(e).splitlines()[0]}). Offline, point @DIR at a "
                      "save_pretrained directory or fill the HF cache once online (huggingface-cli download)") from None


def _check_loaded(info: dict, family: _Family, spec: str):
    """Missing or mismatched weights would stay random: refuse. Unexpected ones are the parts of a hub checkpoint
    that are not the vision trunk (MAE's decoder, CLIP's text tower), and are ignored."""
    missing = list(info.get("missing_keys") or [])
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or []]
    if missing or mismatched:
        raise ValueError(f"{spec}: checkpoint does not fill {family.cls}; missing {_few(sorted(missing))}, "
                         f"wrong shape {_few(sorted(mismatched))}. Is it the model the config names?")


def _processor_dict(transformers, source: str) -> dict:
    from transformers.image_processing_utils import ImageProcessingMixin

    return ImageProcessingMixin.get_image_processor_dict(source)[0]


def hf_preprocess(d: dict, spec: str = "hf:") -> Preprocess:
    """An image processor's config -> Preprocess. `size` {"shortest_edge": S} keeps the aspect ratio (then the centre
    crop, if any); {"height": S, "width": S} resizes both sides to S, the aspect ratio not kept ("squash", e.g.
    ViTImageProcessor, SiglipImageProcessor), then crops if the processor does."""
    size, squash = _side(d.get("size", 224), spec)
    crop = _side(d["crop_size"], spec)[0] if d.get("do_center_crop") and d.get("crop_size") else size
    squash = not d.get("do_center_crop") if squash is None else squash
    mean, std = ((d.get("image_mean", IMAGENET_MEAN), d.get("image_std", IMAGENET_STD))
                 if d.get("do_normalize", True) else ((0.0,) * 3, (1.0,) * 3))
    scale = round(255 * d.get("rescale_factor", 1 / 255), 6) if d.get("do_rescale", True) else 255.0  # [0, 1] -> [0, scale]
    resample = d.get("resample", 2)
    resample = _RESAMPLE.get(resample.lower() if isinstance(resample, str) else int(resample), "bicubic")
    return Preprocess(size, min(crop, size), tuple(mean), tuple(std), (0.0, scale), interpolation=resample,
                      fit="squash" if squash and d.get("do_resize", True) else "crop")


def _side(size, spec: str) -> tuple[int, bool | None]:
    """{"shortest_edge": 256} | {"height": 224, "width": 224} | 224 -> (side, both sides set; None: not said)."""
    if isinstance(size, int):  # legacy configs: a square for ViT-like processors, a shortest edge for cropping ones
        return size, None
    if "shortest_edge" in size and "longest_edge" not in size:
        return int(size["shortest_edge"]), False
    if "height" in size and size["height"] == size.get("width"):
        return int(size["height"]), True
    raise ValueError(f"{spec}: image processor size {size} is not supported; rcdm reads a shortest edge or a square "
                     "height x width")
