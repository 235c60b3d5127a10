"""The frozen-encoder registry: a spec string -> a `FrozenEncoder` mapping [0, 1] images to (B, D) embeddings.

Spec grammar (`list_encoders()` gives the forms for --help texts):

    torchvision:ARCH            any torchvision classification architecture, random init
    torchvision:ARCH@WEIGHTS    torchvision's published weights by enum name, e.g. IMAGENET1K_V1 (downloads)
    torchvision:ARCH@PATH       a local state dict (.pth/.pt/.safetensors); its classifier keys may be absent
    timm:NAME[@PATH]            a timm model (pretrained=False, num_classes=0), optionally with local weights
    file:DIR | file:PATH        rcdm-native: DIR/config.json + DIR/model.safetensors (or PATH beside config.json)
    RELEASE[@PATH]              an official SSL checkpoint by name (see RELEASES); @PATH = a local copy of that file

Layers: `backbone` (pooled trunk), `projector` (the release's head), any module name (forward hook; maps are
average-pooled, token sequences give their CLS token) and `a+b` concatenations.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import pickle
from dataclasses import asdict, dataclass
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How [0, 1] pixels become the network's input: shorter side to `size`, centre crop `crop`, map [0, 1] to
    `pixel_range`, then (x - mean) / std. RCDM's reference fed its encoders [-1, 1] pixels: `pixel_range` records
    such quirks."""

    size: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):  # JSON gives lists; keep tuples so configs compare equal after a round trip
        for name in ("mean", "std", "pixel_range"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if len(self.mean) != 3 or len(self.std) != 3 or len(self.pixel_range) != 2:
            raise ValueError(f"Preprocess needs 3 means, 3 stds and a (low, high) pixel range; got {self}")
        if not 0 < self.crop <= self.size:
            raise ValueError(f"Preprocess crop ({self.crop}) must be positive and at most size ({self.size})")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**d)


IMAGENET_PREPROCESS = Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD)


class EncoderNet(nn.Module):
    """A trunk with pooled (B, D) output and an optional head on top: the shape every encoder is brought into."""

    def __init__(self, backbone: nn.Module, projector: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projector


class FrozenEncoder(nn.Module):
    """A frozen network plus its preprocessing and layer read-out: [0, 1] images of any size -> float32 (B, dim).

    Parameters never require grad and the module never leaves eval mode, but `forward` is differentiable with
    respect to its input (adversarial examples need that)."""

    def __init__(self, net: nn.Module, spec: str, layer: str, preprocess: Preprocess):
        super().__init__()
        self.net, self.spec, self.layer, self.preprocess = net, spec, layer, preprocess
        self._layers = _resolve_layers(net, layer, spec)  # [(name, module or None for backbone/projector)]
        self._need_head = any(name == "projector" or _inside(m, net.projector) for name, m in self._layers)
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
        x = resize_center_crop(x01, p.size, p.crop)  # (B, 3, crop, crop)
        lo, hi = p.pixel_range
        mean = torch.tensor(p.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(p.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x * (hi - lo) + lo - mean) / std
        dtype = next(self.net.parameters()).dtype  # a pipeline may have cast the encoder to half precision
        return self._read_out(x.to(dtype)).float()  # (B, D)

    def _read_out(self, x: torch.Tensor) -> torch.Tensor:
        feats: dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_hook(partial(_store_pooled, feats, name))
                 for name, m in self._layers if m is not None]
        try:
            h = self.net.backbone(x)  # (B, D_backbone)
            z = self.net.projector(h) if self._need_head else None  # (B, D_projector)
        finally:
            for hook in hooks:
                hook.remove()
        feats.update(backbone=h, projector=z)
        missing = [name for name, _ in self._layers if feats.get(name) is None]
        if missing:
            raise ValueError(f"{self.spec}: layer(s) {missing} produced no output in the forward pass")
        return torch.cat([feats[name].flatten(1) for name, _ in self._layers], dim=1)

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
        import torchvision.transforms.v2.functional as TF

        from .data import open_image, pil_to_uint8

        x = TF.resize(pil_to_uint8(open_image(img)), self.preprocess.size, antialias=True)
        return TF.center_crop(x, [self.preprocess.crop, self.preprocess.crop])

    def config(self) -> dict:
        """What a checkpoint records to reload this encoder and check it: JSON-serialisable."""
        return {"spec": self.spec, "layer": self.layer, "dim": self.dim, "preprocess": self.preprocess.to_dict()}


def resize_center_crop(x: torch.Tensor, size: int, crop: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, crop, crop): shorter side to `size` (antialiased bilinear), then centre crop.

    Images already crop x crop are taken as preprocessed and returned unchanged. Output sizes and crop offsets
    follow torchvision's `resize` / `center_crop`, so PIL and tensor inputs agree."""
    h, w = x.shape[-2:]
    if (h, w) == (crop, crop):
        return x
    short, long = min(h, w), max(h, w)
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    return x[..., top : top + crop, left : left + crop].contiguous()  # strided views make convs ~50x slower


def _store_pooled(feats, name, module, inputs, output):
    """Forward hook: pool at once, before any in-place op downstream can change the tensor."""
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"layer {name!r} returns {type(output).__name__}, not a tensor; pick another module")
    if output.ndim == 4:  # (B, C, H, W) feature map -> global average pool
        output = output.mean(dim=(2, 3))
    elif output.ndim == 3:  # (B, N, C) tokens -> CLS token
        output = output[:, 0]
    feats[name] = output  # (B, C)


def _inside(module, parent) -> bool:
    return module is not None and parent is not None and any(module is m for m in parent.modules())


def _resolve_layers(net, layer: str, spec: str) -> list[tuple[str, nn.Module | None]]:
    """'backbone+layer3' -> [('backbone', None), ('layer3', <module>)]; names may be relative to the trunk."""
    names = [n.strip() for n in layer.split("+")]
    if not all(names):
        raise ValueError(f"layer {layer!r}: empty name; use e.g. 'backbone', 'projector' or 'backbone+projector'")
    out = []
    for name in names:
        if name == "projector" and net.projector is None:
            raise ValueError(f"{spec}: no projector (head) in this model or checkpoint; use layer 'backbone' or a "
                             "module name (official releases: load the full checkpoint, not the backbone-only file)")
        out.append((name, None if name in ("backbone", "projector") else _find_module(net, name, spec)))
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


# ---------------------------------------------------------------- reading weight files


def _training_filter_stand_in(p):
    """Stands in for `exclude_bias_and_norm`, which the VICReg and Barlow Twins training scripts pickle (as
    `__main__.exclude_bias_and_norm`) inside their full checkpoints' optimizer state. Only tensors are used."""
    raise RuntimeError("stand-in for a training-script function; never called")


# Globals the official full checkpoints contain besides tensors: DINO stores its argparse `args`.
_SAFE_GLOBALS = [argparse.Namespace, (_training_filter_stand_in, "__main__.exclude_bias_and_norm")]


def _safe_load(load: Callable, what) -> dict:
    """Run a torch.load-style call with weights_only=True: tensors and plain containers only, never code."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return load(map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _pickle_error_detail(e)
        if "GLOBAL" not in detail:
            raise ValueError(f"{what}: not a readable PyTorch checkpoint ({detail})") from None
        raise ValueError(f"{what}: refused to unpickle it; it holds Python objects besides tensors, and loading "
                         "those could run arbitrary code (torch.load weights_only=True). Re-save its state_dict in a "
                         f"trusted environment or convert it to safetensors. Detail: {detail}") from None


def _pickle_error_detail(e: Exception) -> str:
    """The line of torch's long weights_only error that says what was refused (e.g. 'Unsupported global: ...')."""
    lines = [ln.strip() for ln in str(e).splitlines() if "WeightsUnpickler error" in ln]
    return lines[0] if lines else str(e).splitlines()[0]


def read_weights(path: Path):
    """A .safetensors file, or a torch pickle loaded with weights_only=True."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return _safe_load(partial(torch.load, path), path)


def _download(url: str):
    return _safe_load(partial(torch.hub.load_state_dict_from_url, url), url)


def _resolve_path(p: str, base_dir: Path | None, spec: str) -> Path:
    path = Path(p).expanduser()
    path = path if path.is_absolute() else (base_dir or Path.cwd()) / path
    if not path.exists():
        raise FileNotFoundError(f"{spec}: {path} does not exist")
    return path


def _load_strict(net: nn.Module, state: dict, spec: str):
    """load_state_dict with every key accounted for, failing with the offending keys named."""
    try:
        res = net.load_state_dict(state, strict=False)  # strict=False only to report both lists ourselves
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{spec}: checkpoint tensors do not fit the architecture: {e}") from None
    if res.missing_keys or res.unexpected_keys:
        raise ValueError(f"{spec}: checkpoint keys do not match the expected layout; "
                         f"missing {_few(res.missing_keys)}, unexpected {_few(res.unexpected_keys)}")


def _few(keys, n=6):
    return f"{list(keys[:n])}{f' (+{len(keys) - n} more)' if len(keys) > n else ''}"


# ---------------------------------------------------------------- torchvision / timm / file


def _strip_classifier(model: nn.Module, spec: str) -> str:
    """Replace the last nn.Linear (the classifier) by Identity so the model returns the classifier's input."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{spec}: no Linear classifier to remove; this architecture is not supported")
    parent, _, child = linears[-1].rpartition(".")
    setattr(model.get_submodule(parent), child, nn.Identity())
    return linears[-1]


def _without(state: dict, prefixes) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(tuple(prefixes))}


def _build_torchvision(spec: str, rest: str, base_dir):
    import torchvision.models as tvm

    arch, _, source = rest.partition("@")
    archs = tvm.list_models(module=tvm)
    if arch not in archs:
        raise ValueError(f"{spec}: unknown torchvision architecture {arch!r}; close: "
                         f"{difflib.get_close_matches(arch, archs, n=5)}")
    enum = tvm.get_model_weights(arch)
    if source in enum.__members__:  # published weights by name (incl. DEFAULT), downloaded by torchvision
        model = tvm.get_model(arch, weights=source)
        _strip_classifier(model, spec)
        return EncoderNet(model), _torchvision_preprocess(enum[source])
    model = tvm.get_model(arch, weights=None)
    classifier = _strip_classifier(model, spec)
    if source:
        names = ", ".join(enum.__members__)
        state = read_weights(_resolve_path(source, base_dir, f"{spec} (not a weights name either: {names})"))
        _load_strict(model, _without(state, [classifier + "."]), spec)  # the classifier is not the representation
    return EncoderNet(model), IMAGENET_PREPROCESS


def _torchvision_preprocess(weights) -> Preprocess:
    t = weights.transforms()
    return Preprocess(t.resize_size[0], t.crop_size[0], tuple(t.mean), tuple(t.std))


def _import_timm():
    try:
        import timm
    except ImportError:
        raise ImportError("this encoder needs timm: pip install timm") from None
    return timm


def _build_timm(spec: str, rest: str, base_dir):
    timm = _import_timm()
    name, _, source = rest.partition("@")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as e:  # timm's "Unknown model"
        raise ValueError(f"{spec}: {e}") from None
    if source:
        classifier = model.pretrained_cfg.get("classifier") or ()
        classifier = [classifier] if isinstance(classifier, str) else list(classifier)
        state = read_weights(_resolve_path(source, base_dir, spec))
        _load_strict(model, _without(state, [c + "." for c in classifier]), spec)
    cfg = timm.data.resolve_data_config({}, model=model)
    crop = cfg["input_size"][-1]
    return EncoderNet(model), Preprocess(math.floor(crop / cfg["crop_pct"]), crop, cfg["mean"], cfg["std"])


def _cifar_resnet18(cfg: dict) -> nn.Module:
    from .ssl import SSLEncoder

    _, hidden, out = cfg["projector_dims"]
    return SSLEncoder(cfg["width"], proj_hidden=hidden, proj_out=out)  # state keys backbone.*, projector.*


# config.json "arch" -> builder of an nn.Module with .backbone and .projector
FILE_ARCHS: dict[str, Callable[[dict], nn.Module]] = {"cifar_resnet18": _cifar_resnet18}


def _build_file(spec: str, rest: str, base_dir):
    path = _resolve_path(rest, base_dir, spec)
    weights = path / "model.safetensors" if path.is_dir() else path
    cfg_path = weights.parent / "config.json"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{spec}: {p} does not exist (file: = config.json + model.safetensors)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("arch") not in FILE_ARCHS:
        raise ValueError(f"{spec}: {cfg_path} names arch {cfg.get('arch')!r}; known: {sorted(FILE_ARCHS)}")
    net = FILE_ARCHS[cfg["arch"]](cfg)
    _load_strict(net, read_weights(weights), spec)
    return net, Preprocess.from_dict(cfg["preprocess"])


# ---------------------------------------------------------------- official SSL releases


def _resnet50_trunk() -> nn.Module:
    import torchvision

    model = torchvision.models.resnet50()
    model.fc = nn.Identity()  # every release below drops (or replaces) fc; the trunk ends at the 2048-d avgpool
    return model


def _vit_small_trunk() -> nn.Module:
    # DINO's ViT-S/16 keys (cls_token, pos_embed, patch_embed.proj, blocks.N.*, norm) are timm's; output = CLS token
    # after the final norm, as DINO's VisionTransformer.forward returns.
    return _import_timm().create_model("vit_small_patch16_224", pretrained=False, num_classes=0)


# Head layouts: one letter per nn.Sequential slot. Widths come from the checkpoint's tensor shapes.
_HEAD_LAYERS: dict[str, Callable[[dict, int], nn.Module]] = {
    "L": lambda s, i: nn.Linear(*reversed(_shape(s, f"{i}.weight"))),  # Linear with bias
    "l": lambda s, i: nn.Linear(*reversed(_shape(s, f"{i}.weight")), bias=False),
    "B": lambda s, i: nn.BatchNorm1d(_shape(s, f"{i}.running_mean")[0]),
    "b": lambda s, i: nn.BatchNorm1d(_shape(s, f"{i}.running_mean")[0], affine=False),
    "R": lambda s, i: nn.ReLU(),
    "G": lambda s, i: nn.GELU(),
}


def _build_head(layout: str, state: dict, spec: str) -> nn.Sequential:
    try:
        return nn.Sequential(*[_HEAD_LAYERS[c](state, i) for i, c in enumerate(layout)])
    except ValueError as e:
        raise ValueError(f"{spec}: {e}") from None


def _shape(state: dict, key: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"projector tensor {key!r} is missing from the checkpoint's head")
    return tuple(state[key].shape)


@dataclass(frozen=True)
class Release:
    """An official checkpoint: where it lives and how its keys map onto trunk + head."""

    url: str
    trunk: Callable[[], nn.Module]  # the backbone architecture, (B, D) pooled output
    unwrap: tuple[str, ...]  # nested keys from the file's root to the state dict (each followed if present)
    trunk_prefixes: tuple[str, ...]  # stripped from trunk keys; "" accepts backbone-only files
    head_prefixes: tuple[str, ...]  # keys of the head, stripped
    head_layout: str  # see _HEAD_LAYERS
    head_rename: tuple[tuple[str, str], ...] = ()  # head key prefix -> nn.Sequential index prefix
    ignore: tuple[str, ...] = ()  # tensors that are not part of the representation


_DINO_HEAD = dict(unwrap=("teacher",), trunk_prefixes=("module.backbone.", "backbone.", ""),
                  head_prefixes=("module.head.mlp.", "head.mlp."),
                  # last_layer: the (weight-normed) prototype layer producing 60000/65536 logits, not a representation
                  ignore=("module.head.last_layer.", "head.last_layer."))
_RESNET_FULL = dict(unwrap=("model",), trunk=_resnet50_trunk, trunk_prefixes=("module.backbone.", "backbone.", ""),
                    head_prefixes=("module.projector.", "projector."))
_VISSL = dict(unwrap=("classy_state_dict", "base_model", "model"), trunk=_resnet50_trunk,
              trunk_prefixes=("trunk._feature_blocks.",), head_prefixes=("heads.",))

RELEASES: dict[str, Release] = {
    # facebookresearch/dino. Full checkpoint: {"teacher", "student", "optimizer", "epoch", "args", "dino_loss"};
    # teacher keys "backbone.*" / "head.*" ("module." in front when the teacher was DDP-wrapped). The released RN50
    # head, as RCDM's get_ssl_models.py and other strict public loaders read it, is
    # Linear(2048, 4096)-BN-GELU-Linear(4096, 256) + last_layer: not DINOHead's 3-layer default. Projector = the
    # 256-d bottleneck (what RCDM conditions on).
    "dino_resnet50": Release(
        "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain_full_checkpoint.pth",
        trunk=_resnet50_trunk, head_layout="LBGL", **_DINO_HEAD),
    # ViT-S/16 head: DINOHead defaults, Linear(384, 2048)-GELU-Linear(2048, 2048)-GELU-Linear(2048, 256), no BN.
    "dino_vits16": Release(
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain_full_checkpoint.pth",
        trunk=_vit_small_trunk, head_layout="LGLGL", **_DINO_HEAD),
    # facebookresearch/vicreg. {"epoch", "model", "optimizer"}; model keys "module.backbone.*" (torchvision layout,
    # no fc) and "module.projector.*": Linear-BN-ReLU, Linear-BN-ReLU, Linear(bias=False), 2048-8192-8192-8192.
    "vicreg_resnet50": Release("https://dl.fbaipublicfiles.com/vicreg/resnet50_fullckpt.pth",
                               head_layout="LBRLBRl", **_RESNET_FULL),
    # facebookresearch/barlowtwins full checkpoint (the README's other file, resnet50.pth, is the trunk alone: it
    # loads for `backbone`). {"epoch", "model", "optimizer"}; "module.backbone.*", "module.projector.*" with
    # every Linear bias-free (2048-8192-8192-8192), and "module.bn.*", the loss-side affine-free BatchNorm.
    "barlowtwins_resnet50": Release("https://dl.fbaipublicfiles.com/barlowtwins/ljng/checkpoint.pth",
                                    head_layout="lBRlBRl", ignore=("module.bn.", "bn."), **_RESNET_FULL),
    # The VISSL model-zoo Barlow Twins that RCDM's reference used. VISSL layout:
    # classy_state_dict.base_model.model.{trunk: "_feature_blocks.*", heads: "<block>.clf.<slot>.*"}.
    "barlowtwins_resnet50_vissl": Release(
        "https://dl.fbaipublicfiles.com/vissl/model_zoo/barlow_twins/"
        "barlow_twins_32gpus_4node_imagenet1k_1000ep_resnet50.torch",
        head_layout="lBRlBRl", head_rename=(("0.clf.0.", "0."), ("0.clf.1.", "1."), ("1.clf.0.", "3."),
                                            ("1.clf.1.", "4."), ("2.clf.0.", "6.")), **_VISSL),
    # VISSL SimCLR (RCDM's reference file). heads: "0.clf.0" Linear(2048, 2048) + ReLU, "1.clf.0" Linear(2048, 128).
    "simclr_resnet50": Release(
        "https://dl.fbaipublicfiles.com/vissl/model_zoo/simclr_rn50_1000ep_simclr_8node_resnet_16_07_20.afe428c7/"
        "model_final_checkpoint_phase999.torch",
        head_layout="LRL", head_rename=(("0.clf.0.", "0."), ("1.clf.0.", "2.")), **_VISSL),
    # facebookresearch/moco-v3. {"epoch", "arch", "state_dict", "optimizer", "scaler"}; the projector is the base
    # encoder's fc: Linear(2048, 4096, no bias)-BN-ReLU-Linear(4096, 256, no bias)-BN(affine=False).
    "mocov3_resnet50": Release(
        "https://dl.fbaipublicfiles.com/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar", trunk=_resnet50_trunk,
        unwrap=("state_dict",), trunk_prefixes=("module.base_encoder.",), head_prefixes=("module.base_encoder.fc.",),
        head_layout="lBRlb", ignore=("module.momentum_encoder.", "module.predictor.")),
}


def _unwrap(obj, keys):
    for key in keys:
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
    return obj


def _flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts of tensors (VISSL) -> one dotted-key state dict."""
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _split(state: dict, rel: Release) -> tuple[dict, dict]:
    """Checkpoint keys -> (trunk state, head state), prefixes stripped and ignored tensors dropped."""
    trunk, head = {}, {}
    for k, v in state.items():
        if k.startswith(rel.ignore):
            continue
        hp = next((p for p in rel.head_prefixes if k.startswith(p)), None)
        if hp is not None:
            head[_rename(k[len(hp):], rel.head_rename)] = v
        else:
            tp = next((p for p in rel.trunk_prefixes if k.startswith(p)), "")
            trunk[k[len(tp):]] = v
    return trunk, head


def _rename(key: str, renames) -> str:
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _build_release(spec: str, rel: Release, source: str, base_dir):
    obj = read_weights(_resolve_path(source, base_dir, spec)) if source else _download(rel.url)
    state = _unwrap(obj, rel.unwrap)
    if not isinstance(state, dict):
        raise ValueError(f"{spec}: expected a state dict under {'/'.join(rel.unwrap)}, found {type(state).__name__}")
    trunk, head = _split(_flatten(state), rel)
    with torch.device("meta"):  # the strict load below overwrites every tensor: skip the random init
        net = EncoderNet(rel.trunk(), _build_head(rel.head_layout, head, spec) if head else None)
    net = net.to_empty(device="cpu")
    full = {f"backbone.{k}": v for k, v in trunk.items()} | {f"projector.{k}": v for k, v in head.items()}
    _load_strict(net, full, spec)
    return net, IMAGENET_PREPROCESS


# ---------------------------------------------------------------- registry


_SCHEMES: dict[str, Callable] = {"torchvision": _build_torchvision, "timm": _build_timm, "file": _build_file}
_GRAMMAR = ("torchvision:ARCH[@WEIGHTS|@PATH]", "timm:NAME[@PATH]", "file:DIR")


def list_encoders() -> list[str]:
    """The spec forms and official release names, for --help texts."""
    return list(_GRAMMAR) + [f"{name}[@PATH]" for name in RELEASES]


def _build(spec: str, base_dir: Path | None):
    name, _, source = spec.partition("@")
    if name in RELEASES:
        return _build_release(spec, RELEASES[name], source, base_dir)
    scheme, sep, rest = spec.partition(":")
    if sep and rest and scheme in _SCHEMES:
        return _SCHEMES[scheme](spec, rest, base_dir)
    raise ValueError(f"unknown encoder spec {spec!r}. Known: {', '.join(list_encoders())}. "
                     "ARCH/NAME = a torchvision/timm model name, PATH = a local weights file (.pth/.safetensors).")


def load_encoder(spec: str, layer: str = "backbone", device=None, base_dir: str | Path | None = None) -> FrozenEncoder:
    """Build the frozen encoder a spec names (module docstring gives the grammar) and read out `layer`.

    Relative paths in the spec resolve against `base_dir` (else the working directory); `.spec` keeps them as given."""
    net, preprocess = _build(spec, Path(base_dir) if base_dir is not None else None)
    return FrozenEncoder(net.to(device or "cpu"), spec, layer, preprocess)
