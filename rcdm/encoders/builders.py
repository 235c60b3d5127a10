"""Encoders by architecture: torchvision and timm models, and rcdm-native `file:` directories.

A local weights file (`@PATH`) may be a plain state dict or one of the training-codebase layouts of `formats`
(solo-learn, lightly, MAE, I-JEPA); a head found there becomes the `projector`."""
from __future__ import annotations

import difflib
import json
import math
from typing import Callable

import torch.nn as nn

from . import cifar
from .formats import adapt_cifar_stem, head_from_state, named_from_sequential, split_checkpoint
from .frozen import IMAGENET_PREPROCESS, EncoderNet, Preprocess
from .weights import _load_strict, _resolve_path, _without, import_extra, read_weights

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
    if not source:
        return EncoderNet(model, random_init=True), IMAGENET_PREPROCESS
    names = ", ".join(enum.__members__)
    path = _resolve_path(source, base_dir, f"{spec} (not a weights name either: {names})")
    return _load_file(model, path, [classifier], spec), IMAGENET_PREPROCESS


def _load_file(model: nn.Module, path, classifiers: list[str], spec: str) -> EncoderNet:
    """Trunk (+ head, if the file has one) from a local file, every key accounted for. The classifier is not the
    representation: its keys may be present or absent."""
    split = split_checkpoint(read_weights(path), spec)
    trunk = _without(named_from_sequential(split.trunk, model), [c + "." for c in classifiers])
    if split.format == "solo-learn":
        adapt_cifar_stem(model, trunk)
    net = EncoderNet(model, head_from_state(split.head, spec))
    state = {f"backbone.{k}": v for k, v in trunk.items()} | {f"projector.{k}": v for k, v in split.head.items()}
    _load_strict(net, state, f"{spec} ({split.format} layout)")
    return net


def _torchvision_preprocess(weights) -> Preprocess:
    t = weights.transforms()
    return Preprocess(t.resize_size[0], t.crop_size[0], tuple(t.mean), tuple(t.std))


def _build_timm(spec: str, rest: str, base_dir):
    """timm:NAME (random), timm:NAME.TAG (timm's published weights: HF cache, else download) or timm:NAME[.TAG]@PATH
    (a local file). A tag also selects the preprocessing its weights were trained with (`pretrained_cfg`)."""
    timm = import_extra("timm", "timm")
    name, _, source = rest.partition("@")
    pretrained = "." in name and not source
    model = _create_timm(timm, name, pretrained, spec)
    net = EncoderNet(model, random_init=not pretrained and not source)
    if source:
        classifier = model.pretrained_cfg.get("classifier") or ()
        classifier = [classifier] if isinstance(classifier, str) else list(classifier)
        net = _load_file(model, _resolve_path(source, base_dir, spec), classifier, spec)
    return net, _timm_preprocess(timm.data.resolve_data_config({}, model=model))


def _create_timm(timm, name: str, pretrained: bool, spec: str) -> nn.Module:
    try:  # pretrained: timm reads the HF cache (hf_hub_id) or downloads; its own loader is strict
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    except RuntimeError as e:  # timm's "Unknown model" / "Invalid pretrained tag"
        raise ValueError(f"{spec}: {e}") from None
    except OSError as e:  # huggingface_hub's cache misses and connection errors are OSErrors
        raise OSError(f"{spec}: could not fetch timm's weights for {name!r} (offline and not in the HF cache?): "
                      f"{str(e).splitlines()[0]}. Download once online, or pass a local file: timm:{name}@PATH")


def _timm_preprocess(cfg: dict) -> Preprocess:
    """timm's data config (from the tag's pretrained_cfg) -> Preprocess: resize to crop / crop_pct, centre crop."""
    crop = cfg["input_size"][-1]
    interpolation = cfg.get("interpolation", "bilinear")
    interpolation = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
    return Preprocess(math.floor(crop / cfg["crop_pct"]), crop, cfg["mean"], cfg["std"], interpolation=interpolation)


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
