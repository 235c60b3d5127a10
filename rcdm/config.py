"""Typed configs -> argparse flags, so every config field is a documented CLI flag with no hand plumbing."""
from __future__ import annotations

import argparse
import dataclasses
import typing


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_args(parser: argparse.ArgumentParser, cls, defaults_from_none: bool = False) -> None:
    """One flag per field. `help` comes from the field's metadata; fields without a default are required.

    With `defaults_from_none`, every flag defaults to None so callers can tell "given" from "not given"
    (used to layer flags over a preset or a YAML file).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        typ = hints[f.name]
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kw = {"help": f.metadata.get("help", "") + ("" if not has_default else f" (default: {default!r})")}
        if defaults_from_none:
            kw["default"] = None
        elif has_default:
            kw["default"] = default
        else:
            kw["required"] = True
        origin = typing.get_origin(typ)
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin in (list, tuple):
            kw["type"] = typing.get_args(typ)[0]
            kw["nargs"] = "+"
        else:
            kw["type"] = typ if typ in (int, float, str) else str
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(_flag(f.name), dest=f.name, **kw)


def dataclass_from_args(cls, args: argparse.Namespace, base=None):
    """Build `cls` from parsed args; with `base`, only the flags that were given override it."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    return dataclasses.replace(base, **given) if base is not None else cls(**given)
