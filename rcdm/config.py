"""Typed configs -> argparse flags, so every config field is a documented CLI flag with no hand plumbing.

A field whose type is itself a dataclass (e.g. `TrainConfig.unet`) is a nested config: its fields become flags of
their own, flat (`--block-out-channels`, not `--unet.block-out-channels`), and are gathered back into it.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing


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


def dataclass_from_args(cls, args: argparse.Namespace, base=None):
    """Build `cls` from parsed args; with `base`, only the flags that were given override it."""
    hints = typing.get_type_hints(cls)
    given = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            given[f.name] = dataclass_from_args(hints[f.name], args, getattr(base, f.name, None) if base else None)
        elif getattr(args, f.name, None) is not None:
            v = getattr(args, f.name)
            given[f.name] = tuple(v) if isinstance(v, list) else v
    return dataclasses.replace(base, **given) if base is not None else cls(**given)


def dataclass_from_dict(cls, data: dict, base=None, where: str = "config"):
    """Build `cls` from a (YAML/JSON) dict that mirrors its nesting, or that names a nested config's fields flat,
    as the flags do (`block_out_channels: [...]` for `unet: {block_out_channels: [...]}`). Unknown keys are refused
    by name."""
    hints = typing.get_type_hints(cls)
    data = dict(data)
    for name, typ in hints.items():
        if dataclasses.is_dataclass(typ):
            flat = {k: data.pop(k) for k in [f.name for f in dataclasses.fields(typ)] if k in data}
            if flat:
                data[name] = {**(data.get(name) or {}), **flat}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    values = {}
    for k, v in data.items():
        if dataclasses.is_dataclass(hints[k]):
            if not isinstance(v, dict):
                raise ValueError(f"{where}: '{k}' must be a mapping of {hints[k].__name__} fields")
            v = dataclass_from_dict(hints[k], v, getattr(base, k, None) if base else None, f"{where}.{k}")
        values[k] = tuple(v) if isinstance(v, list) else v
    return dataclasses.replace(base, **values) if base is not None else cls(**values)
