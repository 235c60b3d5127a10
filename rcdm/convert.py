"""The published RCDM ImageNet-128 checkpoints (facebookresearch/RCDM, CC-BY-NC) as rcdm pipelines.

    rcdm convert-rcdm rcdm_ema_dino_trunk.pt --encoder dino_resnet50@dino_full.pth --layer backbone --out DIR
    RCDMPipeline.from_pretrained("rcdm-imagenet128-dino-trunk")      # online: download, convert once, load
    RCDMPipeline.from_pretrained("rcdm-imagenet128-dino-trunk@rcdm_ema_dino_trunk.pt")   # a local copy instead

Each file is a plain state dict of guided-diffusion's `UNetModel` (RCDM's fork, `instance_cond=True`). Conversion
maps every tensor onto `rcdm.adm.ADMUNet` exactly once, checking every shape; the result is a self-describing
pipeline directory that records the encoder, RCDM's preprocessing (224 centre crop of the short side, pixels in
[-1, 1], no ImageNet mean/std; the UNet sees the 128 centre crop), the schedule (linear, 1000 steps, learned
range) and RCDM's own sampler as its default (guided-diffusion's 100 respaced ancestral steps, `ddpm-linspace`).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .adm import ADMUNet
from .encoders import Preprocess, load_encoder
from .encoders.online import check_url
from .encoders.weights import read_weights
from .schedulers import make_scheduler, training_scheduler

RCDM_URL = "https://dl.fbaipublicfiles.com/rcdm/rcdm_ema_{}.pt"
LICENCE = "CC-BY-NC 4.0 (facebookresearch/RCDM)"
# RCDM's encoder view (image_datasets.center_crop_arr at 224, then x / 127.5 - 1): short side to 224, centre crop,
# pixels in [-1, 1] with no normalisation. Recorded in every converted model: the registry's own preprocessing
# for these encoders (ImageNet mean/std, 256 -> 224) is not what the RCDMs were trained on.
RCDM_PREPROCESS = {"size": 224, "crop": 224, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                   "pixel_range": [-1.0, 1.0], "interpolation": "box-bicubic"}
SAMPLER = "ddpm-linspace"  # RCDM's `timestep_respacing "100"` (rcdm.schedulers); recorded in every converted model
REFERENCE = dict(sample_size=128, model_channels=256, channel_mult=(1, 1, 2, 3, 4), num_res_blocks=2,
                 attention_levels=(2, 3, 4), num_heads=4, learn_sigma=True)  # README's MODEL_FLAGS_128


@dataclass(frozen=True)
class Published:
    """One released RCDM: its file stem and the encoder spec and layer it was trained on."""

    stem: str
    encoder: str
    layer: str


PUBLISHED = {f"rcdm-imagenet128-{ssl}-{part}": Published(f"{ssl}_{part}", enc, layer)
             for ssl, enc in [("simclr", "simclr_resnet50"), ("barlow", "barlowtwins_resnet50_vissl"),
                              ("vicreg", "vicreg_resnet50"), ("dino", "dino_resnet50")]
             for part, layer in [("trunk", "backbone"), ("head", "projector")]}
PUBLISHED["rcdm-imagenet128-supervised"] = Published("supervised", "torchvision:resnet50@IMAGENET1K_V1", "backbone")


# ------------------------------------------------------------------------------------------------ key mapping
_RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
             "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def block_names(cfg: dict) -> tuple[dict, dict]:
    """guided-diffusion's input/output block index -> the ADMUNet module paths of its sub-modules, in order."""
    levels, n = len(cfg["channel_mult"]), cfg["num_res_blocks"]
    attn = set(cfg["attention_levels"])
    inputs, k = {0: ["conv_in"]}, 1
    for lvl in range(levels):
        for j in range(n):
            inputs[k] = [f"down_blocks.{lvl}.resnets.{j}"] + ([f"down_blocks.{lvl}.attentions.{j}"] * (lvl in attn))
            k += 1
        if lvl < levels - 1:
            inputs[k], k = [f"down_blocks.{lvl}.downsamplers.0"], k + 1
    outputs, k = {}, 0
    for i, lvl in enumerate(reversed(range(levels))):
        for j in range(n + 1):
            outputs[k] = ([f"up_blocks.{i}.resnets.{j}"] + [f"up_blocks.{i}.attentions.{j}"] * (lvl in attn)
                          + [f"up_blocks.{i}.upsamplers.0"] * (lvl > 0 and j == n))
            k += 1
    return inputs, outputs


def target_key(key: str, inputs: dict, outputs: dict) -> tuple[str, str | None]:
    """(ADMUNet key, attention part or None) for one guided-diffusion key; ValueError if it has no place."""
    fixed = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2", "ssl_emb": "ssl_emb",
             "out.0": "conv_norm_out", "out.2": "conv_out", "middle_block.0": "mid_block.resnets.0",
             "middle_block.1": "mid_block.attentions.0", "middle_block.2": "mid_block.resnets.1"}
    m = re.fullmatch(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        table = inputs if m[1] == "input_blocks" else outputs
        subs = table.get(int(m[2]), [])
        if int(m[3]) >= len(subs):
            raise ValueError(f"unexpected tensor {key!r}: no such block in the reference network")
        prefix, rest = subs[int(m[3])], m[4]
    else:
        prefix, rest = next(((v, key[len(k) + 1:]) for k, v in fixed.items() if key.startswith(k + ".")), (None, key))
        if prefix is None:
            raise ValueError(f"unexpected tensor {key!r}: not part of guided-diffusion's RCDM UNetModel")
    if ".attentions." in prefix:
        return _attention_key(prefix, rest, key)
    if ".resnets." in prefix or ".downsamplers." in prefix or ".upsamplers." in prefix:
        sub, _, param = rest.rpartition(".")
        if sub not in _RESBLOCK:
            raise ValueError(f"unexpected tensor {key!r}: not a ResBlock parameter")
        return f"{prefix}.{_RESBLOCK[sub]}.{param}", None
    return f"{prefix}.{rest}", None


def _attention_key(prefix: str, rest: str, key: str) -> tuple[str, str | None]:
    if rest.startswith("norm."):
        return f"{prefix}.group_norm.{rest[5:]}", None
    if rest.startswith("proj_out."):
        return f"{prefix}.to_out.0.{rest[9:]}", "proj"
    if rest.startswith("qkv."):
        return f"{prefix}.qkv.{rest[4:]}", "qkv"
    raise ValueError(f"unexpected tensor {key!r}: not an AttentionBlock parameter")


def split_legacy_qkv(w: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """guided-diffusion's QKVAttentionLegacy splits heads before q/k/v: output rows are [head][q|k|v][ch].
    (3C, C, 1) or (3C,) -> three (C, C) or (C,) tensors in diffusers' head-major to_q/to_k/to_v layout."""
    three_c = w.shape[0]
    parts = w.reshape(heads, 3, three_c // (3 * heads), *w.shape[1:])  # (H, 3, ch, ...)
    q, k, v = (parts[:, i].reshape(three_c // 3, *w.shape[1:]) for i in range(3))
    return tuple(p.squeeze(-1) if p.ndim == 3 else p for p in (q, k, v))


def convert_state_dict(state: dict, unet: ADMUNet) -> dict:
    """A guided-diffusion state dict -> ADMUNet's, every source tensor used once and every shape checked."""
    cfg = unet.config
    inputs, outputs = block_names(cfg)
    target = unet.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name, part = target_key(key, inputs, outputs)
        if part == "qkv":
            base, param = name.rsplit(".qkv.", 1)
            heads = unet.get_submodule(base).heads
            for proj, t in zip(("to_q", "to_k", "to_v"), split_legacy_qkv(value, heads)):
                _put(out, target, f"{base}.{proj}.{param}", t, key)
        else:
            _put(out, target, name, value.squeeze(-1) if part == "proj" and value.ndim == 3 else value, key)
    missing = sorted(k for k in target if k not in out and not k.startswith(("embedding_", "null_embedding")))
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} tensors of the reference network, e.g. {missing[:3]}; "
                         "is it a truncated file or another model?")
    return out


def _put(out: dict, target: dict, name: str, value: torch.Tensor, source: str) -> None:
    if name not in target:
        raise ValueError(f"tensor {source!r} maps to {name!r}, which the reference network does not have")
    if name in out:
        raise ValueError(f"two checkpoint tensors map to {name!r} (the second: {source!r})")
    if tuple(value.shape) != tuple(target[name].shape):
        raise ValueError(f"tensor {source!r} has shape {tuple(value.shape)}, the reference network expects "
                         f"{tuple(target[name].shape)} for {name!r}: a different width or ssl_dim")
    out[name] = value


# ------------------------------------------------------------------------------------------------ files
def read_checkpoint(path) -> dict:
    """The released file: a plain state dict, read with weights_only=True; a bad file is a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such RCDM checkpoint")
    state = read_weights(p)  # empty, cut-short or foreign files: one ValueError line naming the file
    if not isinstance(state, dict) or "ssl_emb.weight" not in state:
        raise ValueError(f"{p}: not an RCDM checkpoint (no 'ssl_emb.weight'; RCDM files are state dicts of "
                         "guided-diffusion's UNetModel with instance conditioning, e.g. rcdm_ema_dino_trunk.pt)")
    return state


def build_unet(state: dict) -> ADMUNet:
    """The reference network for this file: ssl_dim and the base width are read from its tensors."""
    ssl_dim, width = state["ssl_emb.weight"].shape[1], state["input_blocks.0.0.weight"].shape[0]
    with torch.device("meta"):  # every tensor is overwritten by the converted state: skip the random init
        unet = ADMUNet(embedding_dim=ssl_dim, **{**REFERENCE, "model_channels": width})
    return unet


def convert(checkpoint, encoder: str, layer: str, out, pipeline_class, command: str = "",
            source: str | None = None) -> Path:
    """Convert one released file into a pipeline directory at `out` (written atomically by
    `pipeline_class.save_pretrained`; the caller passes `rcdm.RCDMPipeline`, so this module stays below it)."""
    enc = load_encoder(encoder, layer)
    if enc.random_init:  # from_pretrained would refuse the result: its fingerprint changes with every init
        raise ValueError(f"--encoder {encoder!r} has random weights, but an RCDM is conditioned on the trained "
                         "encoder it was released with: name its weights, e.g. torchvision:resnet50@IMAGENET1K_V1 or "
                         "dino_resnet50[@FILE] (rcdm.convert.PUBLISHED lists each release's encoder)")
    state = read_checkpoint(checkpoint)
    unet = build_unet(state)
    converted = convert_state_dict(state, unet)
    unet = unet.to_empty(device="cpu")
    unet.load_state_dict({**unet.state_dict(), **converted, "embedding_mean": torch.zeros(unet.config.embedding_dim),
                          "embedding_std": torch.ones(unet.config.embedding_dim)}, strict=True)
    if enc.dim != unet.config.embedding_dim:
        raise ValueError(f"{checkpoint}: this RCDM was trained on {unet.config.embedding_dim}-d embeddings, but "
                         f"encoder {encoder!r} layer {layer!r} gives {enc.dim}-d ones; pick the matching encoder/layer")
    enc.preprocess = Preprocess.from_dict(RCDM_PREPROCESS)
    sched = make_scheduler(SAMPLER, training_scheduler("epsilon", variance_type="learned_range").config)
    pipe = pipeline_class(unet=unet.eval(), scheduler=sched, encoder=enc)
    pipe.sampling_defaults = {"num_inference_steps": 100, "guidance_scale": 1.0}
    training = {"command": command, "converted_from": source or str(checkpoint), "licence": LICENCE,
                "reference": "facebookresearch/RCDM at 71daaf1, MODEL_FLAGS_128, EMA weights"}
    pipe.save_pretrained(out, training=training)
    write_card(Path(out), source or str(checkpoint), encoder, layer, command, unet)
    return Path(out)


def write_card(out: Path, source: str, encoder: str, layer: str, command: str, unet: ADMUNet) -> None:
    n, cfg = sum(p.numel() for p in unet.parameters()), unet.config
    levels = "/".join(str(cfg.sample_size // 2**i) for i in cfg.attention_levels)
    (out / "README.md").write_text(
        f"# RCDM ImageNet-128 on `{encoder}` ({layer})\n\n"
        f"Converted from `{source}`, released by Bordes et al. (facebookresearch/RCDM) under {LICENCE}: "
        "non-commercial use only.\n\n"
        f"- Network: guided-diffusion ADM, {cfg.sample_size} px, {cfg.model_channels} channels, mult "
        f"{tuple(cfg.channel_mult)}, attention at {levels} px, {cfg.num_heads} heads, learned variance; {n:,} "
        f"parameters; h ({cfg.embedding_dim}-d) enters through one Linear added to the time embedding.\n"
        "- Encoder input: RCDM's `center_crop_arr` at 224 (2x2 box halving, bicubic resize of the short side to 224 "
        "with the long side rounded, centre crop), pixels in [-1, 1], no mean/std.\n"
        f"- Sampler: `{SAMPLER}`, guided-diffusion's respaced ancestral sampler as RCDM samples: 100 steps on "
        "space_timesteps(1000, [100]) = 999, 989, ..., 10, 0, the learned variance, x0 clipped to [-1, 1], no noise "
        "at t = 0. The faster samplers (ddim, dpm++, ...) are one `scheduler=` away. No classifier-free guidance "
        "(the released models have no null condition).\n\n"
        f"Command:\n\n```\n{command}\n```\n")


# ------------------------------------------------------------------------------------------------ names
def resolve_published(name: str, pipeline_class=None, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """`rcdm-imagenet128-<ssl>-<trunk|head>[@RCDM_FILE][+ENCODER_FILE]` -> a converted pipeline directory (made once,
    under the torch hub cache, by `convert` with `pipeline_class`), or None if `name` is not one of the published
    models. Without @RCDM_FILE the RCDM file is downloaded; without +ENCODER_FILE the encoder's release is (both into
    the torch hub cache)."""
    rest, _, enc_file = name.partition("+")
    base, _, local = rest.partition("@")
    if base not in PUBLISHED:
        return None
    pub = PUBLISHED[base]
    root = Path(cache_dir or Path(torch.hub.get_dir()) / "rcdm")
    out = root / (base if not local else f"{base}-{Path(local).stem}")
    if _current(out):
        return out
    ckpt = Path(local) if local else _download(RCDM_URL.format(pub.stem), root, name)
    encoder = f"{pub.encoder.split('@')[0]}@{enc_file}" if enc_file else pub.encoder
    if pipeline_class is None:
        raise FileNotFoundError(f"{name} is not converted yet: load it once with RCDMPipeline.from_pretrained({name!r}) "
                                f"or convert it with `rcdm convert-rcdm`")
    return convert(ckpt, encoder, pub.layer, out, pipeline_class, command=f"RCDMPipeline.from_pretrained({name!r})",
                   source=RCDM_URL.format(pub.stem))


def _current(out: Path) -> bool:
    """A conversion made before the recorded sampler became RCDM's own is made again (same weights)."""
    meta = out / "rcdm_pipeline.json"
    recorded = json.loads(meta.read_text()) if meta.is_file() else {}
    return recorded.get("sampling", {}).get("scheduler", recorded.get("scheduler")) == SAMPLER  # new form, old form


def _download(url: str, root: Path, name: str) -> Path:
    """The RCDM file through the cache; offline and not cached: one line at once, not a network timeout."""
    dst = root / Path(url).name
    check_url(name, url, dst, f"use {name.partition('@')[0]}@FILE[+ENCODER_FILE]")
    root.mkdir(parents=True, exist_ok=True)
    if not dst.is_file():
        torch.hub.download_url_to_file(url, str(dst), progress=True)  # writes a temporary file, then renames
    return dst
