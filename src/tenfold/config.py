"""Settings: every verb's options as one typed dataclass, loaded from its defaults, then a YAML file's section,
then overrides (the command line's, or a caller's dict); the verb's flags are made from the same fields.

A setting is one line of its dataclass:

    max_tokens: int = setting(80_000, "longest document, in target-model tokens")

The annotation is the type a value is coerced to (str, int, float, bool, a Literal of the allowed values,
list[...], X | None); the text is the flag's help. A field without a default is a required flag. Checks across
fields go in the dataclass's __post_init__ and raise RecipeError. An error names the key, where it was set (the
file, or the command line) and what is allowed. (Plain dataclasses rather than pydantic: the checks are a few
lines, and the messages can list the allowed keys, which pydantic's "extra fields" error does not.)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from tenfold.errors import RecipeError


def setting(default: Any = dataclasses.MISSING, help: str = "", parse: Callable[[Any], Any] | None = None,
            **flag) -> Any:
    """A settings field: its default (none: a required flag), its help, and optionally `parse`, a function that
    turns a value into the field's (raising RecipeError) in place of coercion by type. `flag` holds what the
    flag takes besides: nargs ("*" or "+": a list of separate words rather than comma-separated text),
    positional=True."""
    metadata = {"help": help, "parse": parse, "flag": flag}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=functools.partial(type(default), default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@functools.cache
def field_types(cls) -> dict[str, Any]:
    """Each field of the settings class with its (resolved) type."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None)) + " or none"
    if origin is list:
        return f"comma-separated {describe(args[0])}s"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise a RecipeError naming the key."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise RecipeError(f"{key}: {value!r} is not allowed; use one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, options[0], key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, item, key) for v in value]
    if dataclasses.is_dataclass(tp):  # a nested settings object (plan's recipe, the demo's sizes)
        if not isinstance(value, tp):
            raise RecipeError(f"{key}: expected {tp.__name__}, got {value!r}")
        return value
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, os.PathLike):
                return os.fspath(value)
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{key}: expected {describe(tp)}, got {value!r}") from None
    raise RecipeError(f"{key}: unsupported type {tp}")


def read_recipe_file(path: str | Path, kind: str = "recipe") -> dict:
    """A recipe (or suite) file's mapping of sections; a missing file, bad YAML or another shape is a RecipeError."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{kind} file {path} not found; give an existing YAML file (see recipes/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not valid YAML: {e}; fix that line") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of sections (model, rope, lora, data, train, synth, ...)")
    return raw


def check_value(cls, name: str, value: Any, kind: str, prefix: str = "") -> Any:
    """`value` as the type of cls's field `name` (its key: prefix + name); an unknown name is a RecipeError
    listing the allowed keys of this `kind` of settings ("synth", "recipe", ...)."""
    known = field_types(cls)
    if name not in known:
        raise RecipeError(f"unknown {kind} key {prefix + name!r}; allowed: {', '.join(prefix + k for k in known)}")
    parse = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("parse")
    return parse(value) if parse else coerce(value, known[name], f"{prefix or kind + '.'}{name}")


def check_values(cls, values: dict, kind: str, where: str | None = None) -> dict:
    """Every value of a mapping checked with check_value; errors start with `where` they were set, if given."""
    if not isinstance(values, dict):
        raise RecipeError(f"{where or kind}: expected a mapping of {kind} keys, got {values!r}")
    try:
        return {name: check_value(cls, name, value, kind) for name, value in values.items()}
    except RecipeError as e:
        raise (RecipeError(f"{where}: {e}") if where else e) from None


def load_settings(cls, section: str, path: str | Path | None = None, overrides: dict | None = None):
    """cls from its defaults, then the `section:` mapping of the YAML file at `path`, then `overrides` (the
    "command line" in messages); every value checked. Overrides that are None are not given. A class with a
    `recipe` field gets the file's path there (synth and mix read the target model's name from it)."""
    raw = (read_recipe_file(path).get(section) or {}) if path else {}
    values = check_values(cls, raw, section, str(path)) if raw else {}
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    values.update(check_values(cls, given, section, "command line"))
    if path and "recipe" in field_types(cls) and not dataclasses.is_dataclass(field_types(cls)["recipe"]):
        values.setdefault("recipe", str(path))
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and required(f)]
    if missing:
        raise RecipeError(f"{section} needs {', '.join(missing)}; give "
                          + ", ".join(f"--{name.replace('_', '-')}" for name in missing))
    return cls(**values)


def required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_flags(parser, cls, prefix: str = "") -> None:
    """One flag per field of cls (nested settings objects excepted), each defaulting to absent, so that only
    what is given overrides. Without a prefix the flag is --field-name, parsed by argparse (int, float, the
    choices of a Literal, store_true for a bool that is off by default), so a bad value gets argparse's message
    naming the flag. With one (a recipe section's "lora.") it is --lora.field_name VALUE: the text reaches
    coerce(), whose message names the key."""
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            continue
        spec = {"help": flag_help(f, tp, bool(prefix)), "default": argparse.SUPPRESS}
        if prefix:
            parser.add_argument(f"--{prefix}{f.name}", dest=f"{prefix}{f.name}", metavar="VALUE", **spec)
        elif f.metadata.get("flag", {}).get("positional"):
            parser.add_argument(f.name, help=spec["help"])
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, required=required(f),
                                **spec, **argparse_kwargs(f, tp))


def argparse_kwargs(f: dataclasses.Field, tp) -> dict:
    """What argparse parses a field's flag with (see add_flags); lists and parsed fields stay text."""
    nargs = f.metadata.get("flag", {}).get("nargs")
    if nargs:
        return {"nargs": nargs}
    options = [a for a in typing.get_args(tp) if a is not type(None)]
    base = options[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(options) == 1 else tp
    if f.metadata.get("parse") or typing.get_origin(base) is list:
        return {}
    if base is bool:
        return {"action": "store_true"} if default_of(f) is False else {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(base) is Literal:
        return {"choices": list(typing.get_args(base))}
    return {"type": base} if base in (int, float) else {}


def flag_help(f: dataclasses.Field, tp, with_type: bool) -> str:
    """The field's help, with its type (recipe keys) and its default where the text does not say it."""
    text = f.metadata.get("help", "")
    default = None if required(f) else default_of(f)
    if with_type:
        text = f"{text} [{describe(tp)}]".strip()
    if not (default is None or default is False or default in ("", [], {})) and "default" not in text:
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text += f" (default: {shown})"
    return text.replace("%", "%%")  # argparse formats help with %
