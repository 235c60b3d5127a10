"""`hf:ORG/NAME[@DIR]`: vision transformers from the Hugging Face hub, through transformers.

ORG/NAME is read from the HF cache (or downloaded when online); @DIR reads a local `save_pretrained` directory
instead (config.json, model.safetensors, preprocessor_config.json). The model class follows config.json's
model_type; the preprocessing follows preprocessor_config.json and is recorded in the encoder's config.

`backbone` is the model's own pooled output where it has one (DINOv2: the normed CLS token; CLIP: post-layernorm CLS;
SigLIP: the attention-pool head), else the CLS token (ViT-MAE, ViT) or the patch mean (I-JEPA, and data2vec-vision
with use_mean_pooling, without the fine-tuned pooler's layernorm). `vit` gives cls / mean / blocks.N.
"""
from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from .frozen import IMAGENET_MEAN, IMAGENET_STD, EncoderNet, Preprocess
from .vit import TokenLayout, pool_tokens
from .online import hub_access, hub_in_cache
from .weights import few_keys, first_line, import_extra, resolve_weights_path, sniff


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


def build_hf(spec: str, rest: str, base_dir):
    """hf:ORG/NAME[@DIR]: a transformers vision model from the HF cache, the Hub or a save_pretrained directory."""
    transformers = import_extra("transformers", "hf")
    repo, _, local = rest.partition("@")
    if local:
        source = str(_check_dir(resolve_weights_path(local, base_dir, spec), spec))
        access = nullcontext()
    else:
        source = repo
        access = hub_access(spec, repo, hub_in_cache(repo), "point @DIR at a save_pretrained copy")
    with access, _quiet(transformers):  # its load report lists every unexpected key (a CLIP text tower: hundreds)
        config = _fetch(spec, source, lambda: transformers.PretrainedConfig.get_config_dict(source)[0])
        family = _FAMILIES.get(config.get("model_type"))
        if family is None:
            raise ValueError(f"{spec}: config.json's model_type {config.get('model_type')!r} is not one rcdm reads; "
                             f"hf: reads {', '.join(sorted(_FAMILIES))}")
        # mismatched sizes are loaded as random and listed, so that _check_loaded names them (transformers would
        # raise pointing at a report its logging level hides)
        load = partial(getattr(transformers, family.cls).from_pretrained, source, output_loading_info=True,
                       dtype=torch.float32, ignore_mismatched_sizes=True, **dict(family.kwargs))
        model, info = _fetch(spec, source, load)
        _check_loaded(info, family, spec)
        processor = _fetch(spec, source, lambda: _processor_dict(transformers, source))
    return EncoderNet(HFVisionTrunk(model.eval(), family)), hf_preprocess(processor, spec)


def _check_dir(path: Path, spec: str) -> Path:
    """A save_pretrained directory: its JSON files and weight files readable, each failure one line naming the file."""
    if not path.is_dir():
        raise ValueError(f"{spec}: {path} is not a directory; @DIR is a save_pretrained directory (config.json, "
                         "model.safetensors, preprocessor_config.json)")
    for name in ("config.json", "preprocessor_config.json"):
        f = path / name
        if not f.is_file():
            raise FileNotFoundError(f"{spec}: {f} does not exist; @DIR is a save_pretrained directory (model."
                                    "save_pretrained(DIR) and processor.save_pretrained(DIR) write it)")
        try:
            json.loads(f.read_text())
        except ValueError as e:
            raise ValueError(f"{spec}: {f} is not valid JSON ({e}); save it again") from None
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        raise FileNotFoundError(f"{spec}: {path} holds no model.safetensors (or pytorch_model.bin); save the model "
                                "with save_pretrained into it")
    for f in weights:
        _check_weights_file(f)
    return path


def _check_weights_file(f: Path) -> None:
    from safetensors import safe_open

    if sniff(f) == "safetensors":
        try:
            with safe_open(str(f), "pt"):
                pass
        except Exception as e:  # SafetensorError
            raise ValueError(f"{f}: a safetensors file that cannot be read ({first_line(e)}); it is probably "
                             "truncated: download or save it again") from None


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
    """Run a from_pretrained-style call; what transformers raises on a bad file becomes one line naming the spec."""
    try:
        return load()
    except (OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{spec}: transformers cannot read {source!r}: {first_line(e)}") from None
    except Exception as e:  # safetensors' SafetensorError (a cut file in the HF cache), and the like
        if type(e).__name__ != "SafetensorError":
            raise
        raise ValueError(f"{spec}: a weights file of {source!r} cannot be read ({first_line(e)}); it is "
                         "probably truncated: download it again") from None


def _check_loaded(info: dict, family: _Family, spec: str):
    """Missing or mismatched weights would stay random: refuse. Unexpected ones are the parts of a hub checkpoint
    that are not the vision trunk (MAE's decoder, CLIP's text tower), and are ignored."""
    missing = sorted(info.get("missing_keys") or [])
    wrong = [f"{k[0]} {tuple(k[1])} in the file vs {tuple(k[2])}" if isinstance(k, tuple) and len(k) == 3 else str(k)
             for k in info.get("mismatched_keys") or []]
    if wrong:
        raise ValueError(f"{spec}: {len(wrong)} tensors do not fit {family.cls} as config.json describes it, e.g. "
                         f"{'; '.join(sorted(wrong)[:2])}. Do config.json and the weights belong together?")
    if missing:
        raise ValueError(f"{spec}: checkpoint does not fill {family.cls}; missing {few_keys(missing)}. Is it the model "
                         "the config names?")


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
