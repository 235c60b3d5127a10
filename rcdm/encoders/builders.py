"""Encoders by architecture: torchvision and timm models, and rcdm-native `file:` directories.

A local weights file (`@PATH`) may be a plain state dict or one of the training-codebase layouts of `formats`
(solo-learn, lightly, MAE, I-JEPA); a head found there becomes the `projector`, and a solo-learn file brings its
own preprocessing (32 px and CIFAR statistics for its CIFAR models). `@PATH#KEY` reads entry KEY of the file."""
from __future__ import annotations

import difflib
import json
import math
from contextlib import nullcontext
from typing import Callable

import torch.nn as nn

from . import cifar
from .formats import adapt_cifar_stem, head_from_state, named_from_sequential, split_checkpoint, split_part
from .frozen import IMAGENET_PREPROCESS, EncoderNet, Preprocess
from .online import check_url, hub_access, hub_in_cache, torch_hub_file
from .weights import download_weights, drop_prefixes, import_extra, load_strict, read_weights, resolve_weights_path

def _strip_classifier(model: nn.Module, spec: str) -> str:
    """Replace the last nn.Linear (the classifier) by Identity so the model returns the classifier's input."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{spec}: no Linear classifier to remove; this architecture is not supported")
    parent, _, child = linears[-1].rpartition(".")
    setattr(model.get_submodule(parent), child, nn.Identity())
    return linears[-1]


def build_torchvision(spec: str, rest: str, base_dir):
    """torchvision:ARCH[@WEIGHTS|@PATH]: the network (random, published weights or a local state dict)."""
    import torchvision.models as tvm

    rest, part = split_part(rest)
    arch, _, source = rest.partition("@")
    archs = tvm.list_models(module=tvm)
    if arch not in archs:
        raise ValueError(f"{spec}: unknown torchvision architecture {arch!r}; close: "
                         f"{difflib.get_close_matches(arch, archs, n=5)}")
    enum = tvm.get_model_weights(arch)
    if source in enum.__members__:  # published weights by name (incl. DEFAULT), downloaded by torchvision
        url = enum[source].url
        check_url(spec, url, torch_hub_file(url), f"use torchvision:{arch}@FILE (or put it in that cache)")
        model = tvm.get_model(arch, weights=source)
        _strip_classifier(model, spec)
        return EncoderNet(model), _torchvision_preprocess(enum[source])
    model = tvm.get_model(arch, weights=None)
    classifier = _strip_classifier(model, spec)
    if not source:
        _no_part(spec, part)
        return EncoderNet(model, random_init=True), IMAGENET_PREPROCESS
    names = ", ".join(enum.__members__)
    path = resolve_weights_path(source, base_dir, f"{spec} (not a weights name either: {names})")
    net, preprocess = _load_file(model, read_weights(path), [classifier], spec, path, part)
    return net, preprocess or IMAGENET_PREPROCESS


def _no_part(spec: str, part: str | None) -> None:
    if part is not None:
        raise ValueError(f"{spec}: #{part} picks an entry of a checkpoint file; name the file (@FILE#{part})")


def _load_file(model: nn.Module, obj, classifiers: list[str], spec: str, path=None, part=None):
    """(EncoderNet, the file's own preprocessing or None): trunk (+ head, if the file has one and it can be rebuilt
    exactly) from a loaded checkpoint, every key accounted for. The classifier is not the representation: its keys
    may be present or absent."""
    split = split_checkpoint(obj, spec, path, part)
    trunk = drop_prefixes(named_from_sequential(split.trunk, model), [c + "." for c in classifiers])
    cifar_stem = split.format == "solo-learn" and adapt_cifar_stem(model, trunk)
    try:
        head, why = head_from_state(split.head, spec, split.activation), None
    except ValueError as e:  # the trunk is still usable: refuse only the projector, when it is asked for
        head, why = None, str(e)
    net = EncoderNet(model, head, no_projector=why)
    state = {f"backbone.{k}": v for k, v in trunk.items()}
    state |= {f"projector.{k}": v for k, v in split.head.items()} if head is not None else {}
    load_strict(net, state, f"{spec} ({split.format} layout)")
    if split.format == "lightly" and not isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity):
        model.fc_norm = nn.Identity()  # lightly's MaskedVisionTransformerTIMM pools without timm's fc_norm
    return net, (solo_learn_preprocess(split.dataset, cifar_stem) if split.format == "solo-learn" else None)


def _torchvision_preprocess(weights) -> Preprocess:
    t = weights.transforms()
    return Preprocess(t.resize_size[0], t.crop_size[0], tuple(t.mean), tuple(t.std))


# solo-learn's evaluation transforms (solo/data/classification_dataloader.py, prepare_transforms): CIFAR-10/100 are
# fed as they are (32 px) with these statistics, STL-10 resized to 96 x 96, ImageNet(-100) Resize(256)-CenterCrop(224)
_SOLO_LEARN = {"cifar": Preprocess(32, 32, (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
               "stl10": Preprocess(96, 96, (0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261), fit="squash")}


def solo_learn_preprocess(dataset: str | None, cifar_stem: bool) -> Preprocess:
    """The data set args.json names, else the stem: solo-learn rebuilds the ResNet stem for CIFAR only."""
    if dataset in ("cifar10", "cifar100") or (dataset is None and cifar_stem):
        return _SOLO_LEARN["cifar"]
    return _SOLO_LEARN.get(dataset, IMAGENET_PREPROCESS)


def build_timm(spec: str, rest: str, base_dir):
    """timm:NAME (random), timm:NAME.TAG (timm's published weights: HF cache, else download) or timm:NAME[.TAG]@PATH
    (a local file). A tag also selects the preprocessing its weights were trained with (`pretrained_cfg`).
    `#KEY` takes entry KEY of the file (or of the tag's original file), e.g. I-JEPA's "#target_encoder"."""
    timm = import_extra("timm", "timm")
    rest, part = split_part(rest)
    name, _, source = rest.partition("@")
    pretrained = "." in name and not source and part is None
    model = _create_timm(timm, name, pretrained, spec)
    net = EncoderNet(model, random_init=not pretrained and not source and part is None)
    if source or part is not None:
        classifier = model.pretrained_cfg.get("classifier") or ()
        classifier = [classifier] if isinstance(classifier, str) else list(classifier)
        path = resolve_weights_path(source, base_dir, spec) if source else None
        obj = read_weights(path) if path else _tag_file(model.pretrained_cfg, name, part, spec)
        net, own = _load_file(model, obj, classifier, spec, path, part)
        return net, own or _timm_preprocess(timm.data.resolve_data_config({}, model=model))
    return net, _timm_preprocess(timm.data.resolve_data_config({}, model=model))


def _tag_file(cfg: dict, name: str, part: str, spec: str):
    """The original file behind a timm tag (its pretrained_cfg `file` or `url`), for `timm:NAME.TAG#KEY`."""
    if "." not in name:
        _no_part(spec, part)
    if cfg.get("file"):
        return read_weights(resolve_weights_path(cfg["file"], None, spec))
    if cfg.get("url"):
        return download_weights(cfg["url"], spec)
    raise ValueError(f"{spec}: timm's weights for {name} are a converted state dict on the HF Hub, without "
                     f"entries to pick; pass the original file: timm:{name}@FILE#{part}")


def _create_timm(timm, name: str, pretrained: bool, spec: str) -> nn.Module:
    """timm.create_model; pretrained weights come from the HF cache or timm's URL, and a cache miss without network
    fails at once (`online`)."""
    with _timm_weights_access(timm, name, spec) if pretrained else nullcontext():
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=0)
        except RuntimeError as e:  # timm's "Unknown model" / "Invalid pretrained tag"
            raise ValueError(f"{spec}: {e}") from None
        except OSError as e:  # huggingface_hub's other errors (a gated or missing repo)
            raise OSError(f"{spec}: could not fetch timm's weights for {name!r}: {str(e).splitlines()[0]}. Download "
                          f"once online, or pass a local file: timm:{name}@PATH") from None


def _timm_weights_access(timm, name: str, spec: str):
    """Where a tag's weights come from, checked before timm tries: the HF cache (a context that keeps
    huggingface_hub offline when the Hub cannot be reached), or torch hub's cache for a URL."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown name: create_model says so
        cfg = None
    how = f"pass a local file: timm:{name}@PATH"
    if cfg is None or cfg.file:
        return nullcontext()
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id
        cached = hub_in_cache(repo, "model.safetensors") or hub_in_cache(repo, "pytorch_model.bin")
        return hub_access(spec, repo, cached, how)
    if cfg.url:
        check_url(spec, cfg.url, torch_hub_file(cfg.url), how)
    return nullcontext()


def _timm_preprocess(cfg: dict) -> Preprocess:
    """timm's data config (from the tag's pretrained_cfg) -> Preprocess: resize to crop / crop_pct, centre crop."""
    crop = cfg["input_size"][-1]
    interpolation = cfg.get("interpolation", "bilinear")
    interpolation = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
    return Preprocess(math.floor(crop / cfg["crop_pct"]), crop, cfg["mean"], cfg["std"], interpolation=interpolation)


# config.json "arch" -> builder of an nn.Module with .backbone and .projector
FILE_ARCHS: dict[str, Callable[[dict], nn.Module]] = {"cifar_resnet18": cifar.from_config}


def build_file(spec: str, rest: str, base_dir):
    """file:DIR | file:PATH: an rcdm-native encoder, config.json beside its weights."""
    path = resolve_weights_path(rest, base_dir, spec)
    weights = path / "model.safetensors" if path.is_dir() else path
    cfg_path = weights.parent / "config.json"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{spec}: {p} does not exist (file: = config.json + model.safetensors)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ValueError(f"{spec}: {cfg_path} is not valid JSON ({e}); save the encoder again") from None
    if cfg.get("arch") not in FILE_ARCHS:
        raise ValueError(f"{spec}: {cfg_path} names arch {cfg.get('arch')!r}; known: {sorted(FILE_ARCHS)}")
    net = FILE_ARCHS[cfg["arch"]](cfg)
    load_strict(net, read_weights(weights), spec)
    return net, Preprocess.from_dict(cfg["preprocess"])
