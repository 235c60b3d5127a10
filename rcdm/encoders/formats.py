"""Checkpoint layouts of SSL codebases -> (trunk state, head state), for `torchvision:ARCH@PATH` and `timm:NAME@PATH`.

Recognised by their structure (the file is read with weights_only=True first; keys are then loaded strictly):

    ijepa       facebookresearch/ijepa: {"encoder", "predictor", "target_encoder", "opt", ...}. The trunk is
                "encoder" (DDP's "module." stripped; timm keys, no CLS token: vit_*_gap_* models), the network timm's
                `*_ijepa` tags and the hub's facebook/ijepa_* models hold; `@FILE#target_encoder` picks the EMA target
    mae         facebookresearch/mae mae_pretrain_vit_*.pth: {"model": timm-layout ViT keys}; the visualisation
                files' decoder ("decoder_*", "mask_token") is the pixel decoder, not the representation
    lightly     lightly-ai/lightly models: "backbone.*" (a torchvision ResNet as nn.Sequential(children[:-1]) gives
                "backbone.0.weight", ...; a MaskedVisionTransformer gives "backbone.vit.*" and "backbone.mask_token",
                the mask token of masked modelling, dropped) and "projection_head.layers.*"; the DINO examples'
                "teacher_backbone.*" / "teacher_head.layers.*" (the teacher is the evaluated network); momentum and
                student copies, decoders and prediction heads are dropped
    solo-learn  vturrisi/solo-learn Lightning .ckpt: {"state_dict": {"backbone.*", "projector.*" (DINO: "head.mlp.*"),
                "classifier.*", "momentum_*", "predictor.*", "queue", ...}}; only backbone and projector are kept, and
                the args.json solo-learn writes beside it, if there, says the method and the data set
    plain       a state dict of the architecture itself (or under "state_dict" / "model")

`FILE#KEY` takes the checkpoint's entry KEY (a state dict, e.g. I-JEPA's "target_encoder") instead.

A head is rebuilt from its nn.Sequential keys (Linear, BatchNorm1d) and an activation the keys cannot show: GELU
for DINO-style heads (a weight-normed `last_layer` beside the MLP), lightly's MSN (its `prototypes`) and solo-learn's
VIbCReg and DINO; ReLU for the other heads of both codebases. A solo-learn head laid out like both VIbCReg's (GELU)
and VICReg's or Barlow Twins' (ReLU) is refused as a projector unless args.json names the method.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from .releases import build_head

_LIGHTLY_MARKERS = ("projection_head.", "backbone_momentum.", "projection_head_momentum.", "backbone.vit.",
                    "backbone.mask_token", "teacher_backbone.", "student_backbone.")
_MAE_DECODER = ("decoder_", "mask_token")
_PART = re.compile(r"#([A-Za-z_][\w.]*)$")


@dataclass(frozen=True)
class Split:
    """A checkpoint taken apart: its layout, the trunk's keys, the head's (empty: no head), the head's activation
    ("relu", "gelu"; or why it cannot be told), and what the file says it was trained on (solo-learn's args.json)."""

    format: str
    trunk: dict
    head: dict
    activation: str = "relu"
    dataset: str | None = None


def split_part(source: str) -> tuple[str, str | None]:
    """'ckpt.pth#target_encoder' -> ('ckpt.pth', 'target_encoder'); no '#KEY' -> (source, None)."""
    m = _PART.search(source)
    return (source[: m.start()], m[1]) if m else (source, None)


def split_checkpoint(obj, spec: str, path: Path | None = None, part: str | None = None) -> Split:
    """A loaded checkpoint (any of the module docstring's layouts) -> Split, prefixes stripped. `path` is where it
    was read from (solo-learn's args.json is looked for beside it); `part` a '#KEY' selector."""
    if not isinstance(obj, dict):
        raise ValueError(f"{spec}: expected a dict of tensors (a state dict or a training checkpoint), "
                         f"found {type(obj).__name__}")
    if part is not None:
        if not isinstance(obj.get(part), dict):
            entries = sorted(k for k, v in obj.items() if isinstance(v, dict))
            raise ValueError(f"{spec}: the checkpoint has no state dict under {part!r}; its entries: {entries}")
        return Split(f"{part!r} of the", _strip(obj[part], "module."), {})
    if isinstance(obj.get("encoder"), dict) and "target_encoder" in obj:  # I-JEPA, read as timm and transformers do
        return Split("ijepa", _strip(obj["encoder"], "module."), {})
    wrapper = next((k for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
    state = _strip(obj[wrapper] if wrapper else obj, "module.")
    if any(k.startswith(_LIGHTLY_MARKERS) for k in state):
        return _lightly(state)
    if any(k.startswith("backbone.") for k in state):
        return _solo_learn(state, path)
    if wrapper == "model":
        return Split("mae", {k: v for k, v in state.items() if not k.startswith(_MAE_DECODER)}, {})
    return Split("plain", state, {})


def _lightly(state: dict) -> Split:
    root = "teacher_" if any(k.startswith("teacher_backbone.") for k in state) else ""
    trunk = {k: v for k, v in _take(state, f"{root}backbone.").items() if k != "mask_token"}
    head_root = f"{root}head." if root else "projection_head."
    dino = any(k.startswith(f"{head_root}last_layer.") for k in state)  # DINOProjectionHead and its descendants
    msn = "prototypes" in state or any(k.startswith("anchor_projection_head.") for k in state)
    return Split("lightly", _strip(trunk, "vit."), _take(state, f"{head_root}layers."),
                 "gelu" if dino or msn else "relu")


def _solo_learn(state: dict, path: Path | None) -> Split:
    args = _solo_learn_args(path)
    method, dataset = args.get("method"), (args.get("data") or {}).get("dataset")
    if any(k.startswith("head.last_layer.") for k in state):  # DINO: DINOHead's MLP, GELU
        return Split("solo-learn", _take(state, "backbone."), _take(state, "head.mlp."), "gelu", dataset)
    head = _take(state, "projector.")
    if method is not None:
        activation = "gelu" if method == "vibcreg" else "relu"
    elif _layout_or_none(head) == "LBRLBRL":  # VIbCReg (GELU), or VICReg / Barlow Twins (ReLU)
        activation = ("its activation cannot be read from the keys: VIbCReg's head (GELU) and VICReg's or Barlow "
                      "Twins' (ReLU) have the same layout; put solo-learn's args.json (it names the method) beside "
                      "the checkpoint")
    else:
        activation = "relu"
    return Split("solo-learn", _take(state, "backbone."), head, activation, dataset)


def _solo_learn_args(path: Path | None) -> dict:
    """solo-learn's args.json (its Checkpointer writes it beside the .ckpt files); {} if absent or unreadable."""
    f = path.parent / "args.json" if path is not None else None
    try:
        return json.loads(f.read_text()) if f is not None and f.is_file() else {}
    except (OSError, ValueError):
        return {}


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


def adapt_cifar_stem(model: nn.Module, state: dict) -> bool:
    """solo-learn's CIFAR ResNets: conv1 is 3x3, stride 1, padding 2, and there is no max-pool (its base.py).
    True if the stem was rebuilt."""
    w = state.get("conv1.weight")
    if w is not None and w.ndim == 4 and w.shape[-1] == 3 and isinstance(getattr(model, "conv1", None), nn.Conv2d):
        model.conv1 = nn.Conv2d(w.shape[1], w.shape[0], kernel_size=3, stride=1, padding=2, bias=False)
        model.maxpool = nn.Identity()
        return True
    return False


_BN_KEYS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def head_from_state(head: dict, spec: str, activation: str = "relu") -> nn.Sequential | None:
    """An MLP head rebuilt from its nn.Sequential keys: 2-d "i.weight" = Linear, "i.running_mean" = BatchNorm1d
    (affine if it has a weight), indices without tensors = `activation` ("relu" or "gelu"; any other text says why
    it is unknown, and such a head is refused). Slots of any other kind (LayerNorm, IterNorm) are refused."""
    if not head:
        return None
    indices = {k.split(".", 1)[0] for k in head}
    if not all(i.isdigit() for i in indices):
        raise ValueError(f"{spec}: the head's keys are not an nn.Sequential's ({sorted(head)[:4]}); load the "
                         "'backbone' layer with a file that holds only the trunk")
    layout = _layout(head, spec)
    if "R" in layout and activation not in ("relu", "gelu"):
        raise ValueError(f"{spec}: the checkpoint's projector cannot be rebuilt exactly: {activation}")
    return build_head(layout.replace("R", "G" if activation == "gelu" else "R"), head, spec)


def _layout_or_none(head: dict) -> str | None:
    try:
        return _layout(head)
    except ValueError:  # refused when the projector is asked for
        return None


def _layout(head: dict, spec: str = "") -> str:
    """One letter per slot: L/l Linear with/without bias, B/b BatchNorm1d affine/not, R a parameter-free slot."""
    slots = {}
    for k in head:
        i, _, name = k.partition(".")
        slots.setdefault(int(i), set()).add(name)
    out = ""
    for i in range(max(slots, default=-1) + 1):
        names = slots.get(i, set())
        if "running_mean" in names and names <= _BN_KEYS:
            out += "B" if "weight" in names else "b"
        elif names in ({"weight"}, {"weight", "bias"}) and head[f"{i}.weight"].ndim == 2:
            out += "L" if "bias" in names else "l"
        elif not names:
            out += "R"
        else:
            raise ValueError(f"{spec}: projector slot {i} holds {sorted(names)}, neither a Linear nor a BatchNorm1d; "
                             "rcdm rebuilds heads of Linear, BatchNorm1d and one activation: use layer 'backbone'")
    return out
