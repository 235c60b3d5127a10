"""Typed configs from parsed flags or a YAML/JSON dict, with no hand plumbing (the flags themselves are made by
`rcdm.cli.flags.add_dataclass_args`).

A field whose type is itself a dataclass (e.g. `TrainConfig.unet`) is a nested config: its fields become flags of
their own, flat (`--block-out-channels`, not `--unet.block-out-channels`), and are gathered back into it.
"""
from __future__ import annotations

import dataclasses
import typing


def dataclass_from_args(cls, args, base=None):
    """Build `cls` from parsed args (an `argparse.Namespace`); with `base`, only the flags that were given (not
    None) override it."""
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
