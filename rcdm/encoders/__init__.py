"""The frozen-encoder registry: a spec string -> a `FrozenEncoder` mapping [0, 1] images to (B, D) embeddings.

Spec grammar (`list_encoders()` gives the forms for --help texts):

    torchvision:ARCH            any torchvision classification architecture, random init
    torchvision:ARCH@WEIGHTS    torchvision's published weights by enum name, e.g. IMAGENET1K_V1 (downloads)
    torchvision:ARCH@PATH       a local state dict (.pth/.pt/.safetensors); its classifier keys may be absent
    timm:NAME[@PATH]            a timm model (random init, num_classes=0), optionally with local weights
    timm:NAME.TAG[@PATH]        timm's published weights for TAG (HF cache, else download) and their preprocessing;
                                @PATH = a local file instead
    ...@PATH#KEY, NAME.TAG#KEY  entry KEY of a checkpoint holding several networks (I-JEPA's #target_encoder)
    hf:ORG/NAME[@DIR]           a transformers vision model (DINOv2, ViT-MAE, I-JEPA, data2vec-vision, CLIP, SigLIP,
                                ViT) from the HF cache or the hub; @DIR = a local save_pretrained directory
    file:DIR | file:PATH        rcdm-native: DIR/config.json + DIR/model.safetensors (or PATH beside config.json)
    pretrained:NAME             a shipped rcdm-native encoder, file:NAME under rcdm.resources.pretrained_root()
    RELEASE[@PATH]              an official SSL checkpoint by name (see RELEASES); @PATH = a local copy of that file

Layers: `backbone` (pooled trunk), `projector` (the release's head), any module name (forward hook; maps are
average-pooled, token sequences give their CLS token) and `a+b` concatenations. ViTs also take `cls`, `mean`,
`cls+mean` and `blocks.N` (see `vit`). PATH files may be solo-learn, lightly, MAE or I-JEPA checkpoints (`formats`).
Hub names and URLs are read from their caches; offline, a name not cached fails at once (`online`).

Layout: `frozen` (FrozenEncoder, Preprocess, read-outs), `vit` (ViT token read-outs), `weights` (safe file reading,
strict loading), `online` (caches and downloads), `formats` (training-codebase checkpoint layouts), `builders`
(torchvision, timm, file:), `hf` (transformers models), `releases` (official SSL checkpoints), `cifar` (the CIFAR
ResNet of the shipped models).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .builders import FILE_ARCHS, build_file, build_timm, build_torchvision
from .hf import build_hf
from .frozen import IMAGENET_MEAN, IMAGENET_PREPROCESS, IMAGENET_STD, EncoderNet, FrozenEncoder, Preprocess
from .releases import RELEASES, Release, build_release
from .weights import read_weights
from ..resources import pretrained_root

__all__ = ["FILE_ARCHS", "IMAGENET_MEAN", "IMAGENET_PREPROCESS", "IMAGENET_STD", "RELEASES", "EncoderNet",
           "FrozenEncoder", "Preprocess", "Release", "list_encoders", "load_encoder", "read_weights"]


def _build_pretrained(spec: str, rest: str, base_dir):
    """pretrained:NAME: the shipped encoder NAME, found wherever rcdm is installed (a saved model names it so)."""
    if Path(rest).name != rest:
        raise ValueError(f"{spec}: pretrained:NAME takes the name of a shipped encoder, not a path")
    return build_file(spec, str(pretrained_root() / rest), None)


_SCHEMES: dict[str, Callable] = {"torchvision": build_torchvision, "timm": build_timm, "file": build_file,
                                 "hf": build_hf, "pretrained": _build_pretrained}
_GRAMMAR = ("torchvision:ARCH[@WEIGHTS|@PATH]", "timm:NAME[.TAG][@PATH]", "hf:ORG/NAME[@DIR]", "file:DIR",
            "pretrained:NAME")


def list_encoders() -> list[str]:
    """The spec forms and official release names, for --help texts."""
    return list(_GRAMMAR) + [f"{name}[@PATH]" for name in RELEASES]


def _build(spec: str, base_dir: Path | None):
    name, _, source = spec.partition("@")
    if name in RELEASES:
        return build_release(spec, RELEASES[name], source, base_dir)
    scheme, sep, rest = spec.partition(":")
    if sep and rest and scheme in _SCHEMES:
        return _SCHEMES[scheme](spec, rest, base_dir)
    raise ValueError(f"unknown encoder spec {spec!r}. Known: {', '.join(list_encoders())}. "
                     "ARCH/NAME = a torchvision/timm model name, PATH = a local weights file (.pth/.safetensors), "
                     "ORG/NAME = a Hugging Face hub model, DIR = its save_pretrained directory.")


def load_encoder(spec: str, layer: str = "backbone", device=None, base_dir: str | Path | None = None) -> FrozenEncoder:
    """Build the frozen encoder a spec names (module docstring gives the grammar) and read out `layer`.

    Relative paths in the spec resolve against `base_dir` (else the working directory); `.spec` keeps them as given."""
    net, preprocess = _build(spec, Path(base_dir) if base_dir is not None else None)
    return FrozenEncoder(net.to(device or "cpu"), spec, layer, preprocess)
