"""Flag groups that several commands share (model, device, dtype, sampling), defined once, and the flags made from
a typed config's fields (`add_dataclass_args`), so every config field is a documented flag with no hand plumbing.

Sampling flags have the pipeline call's names (--num-samples, --num-inference-steps, --guidance-scale, --scheduler,
--seed) and default to None, which means "the model's recorded choice" (`Sampling.resolve`), so every command that
samples uses the same sampler, steps and guidance unless told otherwise. The old spellings --samples-per-image,
--steps and --guidance still work and warn once. Nothing here imports torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from ..choices import SCHEDULER_NAMES, warn_renamed
from ..flags import DTYPES


def add_model_flag(p: argparse.ArgumentParser, many: bool = False, default_help: str | None = None) -> None:
    if many:
        p.add_argument("--model", nargs="+", default=None, metavar="M",
                       help="pipeline directories or shipped model names; each is labelled by its directory name "
                            "(or give NAME=PATH) " + (default_help or "(default: the shipped default model)"))
    else:
        p.add_argument("--model", default=None,
                       help="pipeline directory or shipped model name (default: the shipped CIFAR-10 backbone model)")


def add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="denoiser precision while sampling; the encoder stays float32. bfloat16 is about 2x faster "
                        "on recent CPUs and GPUs; float16 needs a GPU (default: float32)")


class RenamedFlag(argparse.Action):
    """An old spelling of a flag: stores into the new flag's dest and warns once (hidden from --help)."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        warn_renamed(option_string, self.new)
        setattr(namespace, self.dest, values)


def add_sampling_flags(p: argparse.ArgumentParser, num_samples: int, batch_size: bool = True,
                       what: str = "samples per input (per point, per condition)") -> None:
    """--num-samples, --num-inference-steps, --scheduler, --guidance-scale, --seed (and --batch-size), the old
    spellings of the first three, and the device flags."""
    p.add_argument("--num-samples", type=int, default=num_samples,
                   help=f"{what} (default: {num_samples}; formerly --samples-per-image)")
    p.add_argument("--num-inference-steps", type=int, default=None,
                   help="sampler steps (default: the model's recorded choice; formerly --steps)")
    p.add_argument("--scheduler", default=None, choices=list(SCHEDULER_NAMES),
                   help="sampler (default: the model's recorded choice)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale; 1 = conditional only. Above 1 samples agree more with the "
                        "representation but vary less (default: the model's recorded choice; formerly --guidance)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed: sample k of input i starts from noise seeded (seed, i, k) (default: 0)")
    for old, new, typ in (("--samples-per-image", "--num-samples", int), ("--steps", "--num-inference-steps", int),
                          ("--guidance", "--guidance-scale", float)):
        p.add_argument(old, dest=new[2:].replace("-", "_"), type=typ, action=RenamedFlag, new=new)
    if batch_size:
        p.add_argument("--batch-size", type=int, default=64,
                       help="samples per sampler call; memory and speed only, not results (default: 64)")
    add_device_flags(p)


def set_default(p: argparse.ArgumentParser, dest: str, value, help: str) -> None:
    """Change the default (and help) of a shared flag for one command."""
    for action in p._actions:
        if action.dest == dest:
            action.default, action.help = value, help


def sampling_from_args(args: argparse.Namespace):
    """The `Sampling` spec the sampling flags describe (None fields: the model's recorded choice)."""
    from ..sampling import Sampling

    return Sampling(num_samples=args.num_samples, num_inference_steps=args.num_inference_steps,
                    scheduler=args.scheduler, guidance_scale=args.guidance_scale, seed=args.seed,
                    batch_size=getattr(args, "batch_size", 64),
                    dtype=args.dtype)


# ------------------------------------------------------------------------------------------------ typed configs
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return True, f.default
    if f.default_factory is not dataclasses.MISSING:
        return True, f.default_factory()
    return False, None


def add_dataclass_args(parser: argparse.ArgumentParser, cls, defaults_from_none: bool = False) -> None:
    """One flag per field. `help` comes from the field's metadata; fields without a default are required.

    With `defaults_from_none`, every flag defaults to None so callers can tell "given" from "not given"
    (used to layer flags over a preset or a YAML file).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            add_dataclass_args(parser, typ, defaults_from_none)
            continue
        if f.metadata.get("cli") is False:
            continue
        has_default, default = _default(f)
        kw = {"help": f.metadata.get("help", "") + ("" if not has_default else f" (default: {default!r})")}
        if defaults_from_none:
            kw["default"] = None
        elif has_default:
            kw["default"] = default
        else:
            kw["required"] = True
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(typ) in (list, tuple):
            kw["type"] = typing.get_args(typ)[0]
            kw["nargs"] = "+"
        else:
            kw["type"] = typ if typ in (int, float, str) else str
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(_flag(f.name), dest=f.name, **kw)

