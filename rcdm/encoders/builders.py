"""Encoders by architecture: torchvision and timm models, and rcdm-native `file:` directories."""
from __future__ import annotations

import difflib
import json
import math
from typing import Callable

import torch.nn as nn

from . import cifar
from .frozen import IMAGENET_PREPROCESS, EncoderNet, Preprocess
from .weights import _load_strict, _resolve_path, _without, read_weights

def _strip_classifier(model: nn.Module, spec: str) -> str:
    """Replace the last nn.Linear (the classifier) by Identity so the model returns the classifier's input."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{spec}: no Linear classifier to remove; this architecture is not supported")
    parent, _, child = linears[-1].rpartition(".")
    setattr(model.get_submodule(parent), child, nn.Identity())
    return linears[-1]


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


# config.json "arch" -> builder of an nn.Module with .backbone and .projector
FILE_ARCHS: dict[str, Callable[[dict], nn.Module]] = {"cifar_resnet18": cifar.from_config}


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
