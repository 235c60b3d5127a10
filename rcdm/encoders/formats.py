"""Checkpoint layouts of SSL codebases -> (trunk state, head state), for `torchvision:ARCH@PATH` and `timm:NAME@PATH`.

Recognised by their structure (the file is read with weights_only=True first; keys are then loaded strictly):

    ijepa       facebookresearch/ijepa: {"encoder", "predictor", "target_encoder", "opt", ...}; the trunk is
                "target_encoder" with DDP's "module." prefix (keys are timm's, no CLS token: vit_*_gap_* models)
    mae         facebookresearch/mae mae_pretrain_vit_*.pth: {"model": timm-layout ViT keys}; the visualisation
                files' decoder ("decoder_*", "mask_token") is the pixel decoder, not the representation
    lightly     lightly-ai/lightly models: "backbone.*" (a torchvision ResNet as nn.Sequential(children[:-1]) gives
                "backbone.0.weight", ...; a MaskedVisionTransformerTIMM gives "backbone.vit.*") and
                "projection_head.layers.*"; momentum copies and prediction heads are dropped
    solo-learn  vturrisi/solo-learn Lightning .ckpt: {"state_dict": {"backbone.*", "projector.*", "classifier.*",
                "momentum_*", "predictor.*", "queue", ...}}; only backbone and projector are kept
    plain       a state dict of the architecture itself (or under "state_dict" / "model")
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

_LIGHTLY_MARKERS = ("projection_head.", "backbone_momentum.", "projection_head_momentum.")
_MAE_DECODER = ("decoder_", "mask_token")


@dataclass(frozen=True)
class Split:
    """A checkpoint taken apart: which layout it had, the trunk's keys and the head's (empty: no head)."""

    format: str
    trunk: dict
    head: dict


def split_checkpoint(obj, spec: str) -> Split:
    """A loaded checkpoint (any of the module docstring's layouts) -> Split, prefixes stripped."""
    if not isinstance(obj, dict):
        raise ValueError(f"{spec}: expected a dict of tensors (a state dict or a training checkpoint), "
                         f"found {type(obj).__name__}")
    if isinstance(obj.get("target_encoder"), dict):  # I-JEPA: the EMA target encoder is the evaluated one
        return Split("ijepa", _strip(obj["target_encoder"], "module."), {})
    wrapper = next((k for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
    state = _strip(obj[wrapper] if wrapper else obj, "module.")
    if any(k.startswith(_LIGHTLY_MARKERS) for k in state):
        trunk = _strip(_take(state, "backbone."), "vit.")
        return Split("lightly", trunk, _take(state, "projection_head.layers."))
    if any(k.startswith("backbone.") for k in state):
        return Split("solo-learn", _take(state, "backbone."), _take(state, "projector."))
    if wrapper == "model":
        return Split("mae", {k: v for k, v in state.items() if not k.startswith(_MAE_DECODER)}, {})
    return Split("plain", state, {})


def _take(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _strip(state: dict, prefix: str) -> dict:
    """Remove `prefix` when every key carries it (DDP's "module.", lightly's "vit.")."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def named_from_sequential(state: dict, model: nn.Module) -> dict:
    """Keys of nn.Sequential(*model.children()) ("4.0.conv1.weight") -> the model's own ("layer1.0.conv1.weight").
    lightly's recipes wrap torchvision ResNets this way."""
    if not state or not all(k.split(".", 1)[0].isdigit() for k in state):
        return state
    children = [name for name, _ in model.named_children()]
    out = {}
    for k, v in state.items():
        index, rest = k.split(".", 1)
        out[f"{children[int(index)]}.{rest}" if int(index) < len(children) else k] = v
    return out


def adapt_cifar_stem(model: nn.Module, state: dict) -> None:
    """solo-learn's CIFAR ResNets: conv1 is 3x3, stride 1, padding 2, and there is no max-pool (its base.py)."""
    w = state.get("conv1.weight")
    if w is not None and w.ndim == 4 and w.shape[-1] == 3 and isinstance(getattr(model, "conv1", None), nn.Conv2d):
        model.conv1 = nn.Conv2d(w.shape[1], w.shape[0], kernel_size=3, stride=1, padding=2, bias=False)
        model.maxpool = nn.Identity()


def head_from_state(head: dict, spec: str) -> nn.Sequential | None:
    """An MLP head rebuilt from its nn.Sequential keys: 2-d "i.weight" = Linear, "i.running_mean" = BatchNorm1d
    (affine if it has a weight), indices without tensors = ReLU (the activation of solo-learn's and lightly's
    SimCLR, BYOL, VICReg, Barlow Twins and MoCo heads; a GELU head such as DINO's is not recognised)."""
    if not head:
        return None
    indices = {k.split(".", 1)[0] for k in head}
    if not all(i.isdigit() for i in indices):
        raise ValueError(f"{spec}: the head's keys are not an nn.Sequential's ({sorted(head)[:4]}); load the "
                         "'backbone' layer with a file that holds only the trunk")
    from .releases import _build_head  # releases imports builders, which imports this module

    layout = "".join(_slot(head, i) for i in range(max(map(int, indices)) + 1))
    return _build_head(layout, head, spec)


def _slot(head: dict, i: int) -> str:
    if f"{i}.running_mean" in head:
        return "B" if f"{i}.weight" in head else "b"
    if f"{i}.weight" in head and head[f"{i}.weight"].ndim == 2:
        return "L" if f"{i}.bias" in head else "l"
    return "R"
