"""Typed coercion of plain YAML data into dataclasses.

What: :func:`build` turns a parsed YAML mapping into an instance of a dataclass schema, checking every value
against its field's annotation (``int``, ``float``, ``bool``, ``str``, ``Literal``, ``Optional``, lists and
fixed-length tuples, nested dataclasses) and converting where YAML is loose (lists to tuples, ints to floats,
``"1e-3"`` to a float). :func:`apply_overrides` applies ``--set dotted.key=value`` overrides to the raw
mapping, checking each dotted key against the schema; :func:`check_positive` and :func:`check_range` are the
value checks the schema's ``validate`` methods use.

Why: a configuration mistake should stop a run before it starts, as one :class:`ConfigError` line that names
the dotted key and what was expected, not as a traceback an hour into training. Nothing here knows the
study's schema (that is :mod:`cifar100_func.config`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, TypeVar, Union

import yaml

from .errors import ConfigError

T = TypeVar("T")


# ----------------------------------------------------------------------------------------- validation
def check_positive(key: str, value: int) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``value > 0``."""
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value!r}")


def check_range(key: str, value: float, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``value`` lies in [low, high] (ends open on request)."""
    bad_low = value <= low if low_open else value < low
    bad_high = value >= high if high_open else value > high
    if bad_low or bad_high or (isinstance(value, float) and math.isnan(value)):
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(f"{key}: {value!r} is out of range, expected a value in {lo}{low}, {high}{hi}")


# ----------------------------------------------------------------------------------------- coercion
def type_name(tp: Any) -> str:
    """How an annotation reads in an error message: ``"one of 'a', 'b'"``, ``"a list of 3 ints"``..."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {type_name(args[0])}s"
        return f"a list of {type_name(args[0])}s"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "int", float: "float", bool: "bool", str: "string"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (lists to tuples, ints to floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    wrong = ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong
        return build(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError:
                pass
        raise wrong
    if origin is Literal:
        if value not in args:
            raise wrong
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {type_name(tp)}, got {len(value)} values: {value!r}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        items = [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise wrong from None
        raise wrong
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in the schema, not user input


def build(cls: type[T], data: dict, prefix: str) -> T:
    """An instance of the dataclass ``cls`` from ``data``; keys it leaves out keep the schema's defaults.

    ``prefix`` is the dotted key of ``data`` itself ("" at the top level), used in error messages.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key (known keys: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def plain(obj: Any) -> Any:
    """A copy with nested dicts copied and tuples turned into lists (YAML-safe)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.optimizer.lr=0.005"`` -> (["train", "optimizer", "lr"], 0.005); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. --set train.optimizer.lr=0.005")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML ({first_line(exc)})") from None
    return key.split("."), value


def apply_overrides(schema: type, data: dict, overrides: list[str]) -> dict:
    """Return a copy of the raw mapping ``data`` with each ``dotted.key=value`` applied.

    Each dotted key must name a field of the dataclass ``schema`` (sections down to a value); the values are
    left raw, for :func:`build` to check.
    """
    data = plain(data)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        cls: Any = schema
        for depth, part in enumerate(path):
            dotted = ".".join(path[: depth + 1])
            fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
            if part not in fields:
                raise ConfigError(f"--set {dotted}: no such key (known keys: {', '.join(sorted(fields))})")
            cls = typing.get_type_hints(cls)[part] if dataclasses.is_dataclass(cls) else None
            if depth == len(path) - 1:
                node[part] = value
            else:
                if not dataclasses.is_dataclass(cls):
                    raise ConfigError(f"--set {dotted}: is a value, not a section")
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {dotted}: is a section in the schema but not in the config file")
    return data


def first_line(exc: Exception) -> str:
    """An exception's message on one line (YAML errors span several)."""
    return " ".join(str(exc).split())
