"""The official SSL releases by name: where each checkpoint lives and how its keys map onto trunk + head."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .frozen import IMAGENET_PREPROCESS, EncoderNet, Preprocess
from .weights import download_weights, import_extra, load_strict, read_weights, resolve_weights_path

def _resnet50_trunk() -> nn.Module:
    import torchvision

    model = torchvision.models.resnet50()
    model.fc = nn.Identity()  # every release below drops (or replaces) fc; the trunk ends at the 2048-d avgpool
    return model


def _vit_small_trunk() -> nn.Module:
    # DINO's ViT-S/16 keys (cls_token, pos_embed, patch_embed.proj, blocks.N.*, norm) are timm's; output = CLS token
    # after the final norm, as DINO's VisionTransformer.forward returns.
    return import_extra("timm", "timm").create_model("vit_small_patch16_224", pretrained=False, num_classes=0)


# Head layouts: one letter per nn.Sequential slot. Widths come from the checkpoint's tensor shapes.
_HEAD_LAYERS: dict[str, Callable[[dict, int], nn.Module]] = {
    "L": lambda s, i: nn.Linear(*reversed(_shape(s, f"{i}.weight"))),  # Linear with bias
    "l": lambda s, i: nn.Linear(*reversed(_shape(s, f"{i}.weight")), bias=False),
    "B": lambda s, i: nn.BatchNorm1d(_shape(s, f"{i}.running_mean")[0]),
    "b": lambda s, i: nn.BatchNorm1d(_shape(s, f"{i}.running_mean")[0], affine=False),
    "R": lambda s, i: nn.ReLU(),
    "G": lambda s, i: nn.GELU(),
}


def build_head(layout: str, state: dict, spec: str) -> nn.Sequential:
    """The projector head a release `layout` describes (one letter per layer), built from `state`'s tensors."""
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
    preprocess: Preprocess = IMAGENET_PREPROCESS  # the release's evaluation transform


# DINO's eval_linear.py / eval_knn.py: Resize(256, interpolation=3 = bicubic), CenterCrop(224)
_DINO_HEAD = dict(unwrap=("teacher",), trunk_prefixes=("module.backbone.", "backbone.", ""),
                  preprocess=Preprocess(256, 224, IMAGENET_PREPROCESS.mean, IMAGENET_PREPROCESS.std,
                                        interpolation="bicubic"),
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


def build_release(spec: str, rel: Release, source: str, base_dir):
    """An official SSL release `rel`: its file (`source`, else downloaded), unwrapped and loaded strictly."""
    obj = read_weights(resolve_weights_path(source, base_dir, spec)) if source else download_weights(rel.url, spec)
    state = _unwrap(obj, rel.unwrap)
    if not isinstance(state, dict):
        raise ValueError(f"{spec}: expected a state dict under {'/'.join(rel.unwrap)}, found {type(state).__name__}")
    trunk, head = _split(_flatten(state), rel)
    with torch.device("meta"):  # the strict load below overwrites every tensor: skip the random init
        net = EncoderNet(rel.trunk(), build_head(rel.head_layout, head, spec) if head else None)
    net = net.to_empty(device="cpu")
    full = {f"backbone.{k}": v for k, v in trunk.items()} | {f"projector.{k}": v for k, v in head.items()}
    load_strict(net, full, spec)
    return net, rel.preprocess
