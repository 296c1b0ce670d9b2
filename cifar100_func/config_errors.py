"""Pydantic's validation report as the one line a user reads: ``train.optimizer.lr: -1 is out of range, expected
a value in (0.0, 100.0]``.

Pydantic locates an error as a path (``("model", "blocks", 1)``) and describes it in several lines; the user
needs the dotted key (``model.blocks[1]``), what the schema expects (read from the field's annotation: its type,
its ``annotated_types`` bounds) and the value given, cut short. Nothing here knows the study's schema.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Annotated, Any, Literal, Union


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _bare(tp: Any) -> Any:
    """``tp`` without ``Annotated`` constraints and without ``Optional``."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is Union and type(None) in typing.get_args(tp) and len(typing.get_args(tp)) == 2:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def _walk(loc: tuple, root: type) -> tuple[list, Any]:
    """The longest prefix of pydantic's error location that names keys of the schema ``root``, and its annotation
    (a location goes on past a union into the member tried, and past a dataclass into an unknown key)."""
    tp: Any = root
    used: list = []
    for part in loc:
        base = _bare(tp)
        if isinstance(part, str) and dataclasses.is_dataclass(base) and part in _hints(base):
            tp = _hints(base)[part]
        elif isinstance(part, int) and typing.get_origin(base) in (list, tuple):
            args = typing.get_args(base)
            tp = args[part] if _fixed(base) and part < len(args) else args[0]
        else:
            break
        used.append(part)
    return used, tp


def _fixed(tp: Any) -> bool:
    """Whether ``tp`` is a fixed-length tuple (``tuple[int, int, int]``, not ``tuple[int, ...]``)."""
    return typing.get_origin(tp) is tuple and typing.get_args(tp)[-1] is not Ellipsis


def _dotted(parts: list) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts))


def type_name(tp: Any) -> str:
    """How an annotation reads in an error message: ``"one of 'a', 'b'"``, ``"a list of 3 ints"``..."""
    optional = typing.get_origin(tp) is Union and type(None) in typing.get_args(tp)
    tp = _bare(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        name = "one of " + ", ".join(repr(a) for a in args)
    elif origin is Union:
        name = " or ".join(type_name(a) for a in args if a is not type(None))
    elif origin in (list, tuple):
        item = type_name(args[0])
        count = f"{len(args)} " if _fixed(tp) else ""
        name = f"a list of {count}{item}s" if " " not in item else f"a list of {count}items, each {item}"
    elif dataclasses.is_dataclass(tp):
        name = "a mapping"
    else:
        name = {int: "int", float: "float", bool: "bool", str: "string"}.get(tp, str(tp))
    return name + (" or null" if optional else "")


def _bounds(tp: Any) -> str:
    """``tp``'s bounds as ``in [low, high)`` or ``> low``, read from its ``annotated_types`` constraints."""
    b: dict[str, Any] = {}
    for arg in (tp, *typing.get_args(tp)):  # through Optional
        while typing.get_origin(arg) is Annotated:
            for m in arg.__metadata__:
                b.update({k: getattr(m, k) for k in ("gt", "ge", "lt", "le") if getattr(m, k, None) is not None})
            arg = typing.get_args(arg)[0]
    low = f"({b['gt']}" if "gt" in b else f"[{b['ge']}" if "ge" in b else None
    high = f"{b['lt']})" if "lt" in b else f"{b['le']}]" if "le" in b else None
    if low and high:
        return f"in {low}, {high}"
    return next(f"{op} {b[k]}" for k, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if k in b)


def explain(error: Any, root: type) -> str:
    """One of pydantic's errors (a dict of ``ValidationError.errors()``, validating the dataclass ``root``) as the
    line a user reads: the dotted key, what was expected, what was given."""
    kind, loc, value = error["type"], tuple(error["loc"]), error.get("input")
    shown = _show(value)
    if kind in ("missing", "too_long") and loc and isinstance(loc[-1], int):  # a tuple of the wrong length
        loc = loc[:-1]
    used, tp = _walk(loc, root)
    key = _dotted(used)
    if kind in ("unexpected_keyword_argument", "extra_forbidden", "invalid_key"):
        known = ", ".join(sorted(_hints(_bare(tp))))
        return f"{_dotted([*used, str(loc[len(used)])])}: unknown key (known keys: {known})"
    if _fixed(_bare(tp)) and isinstance(value, (list, tuple)) and kind in ("missing", "too_long", "too_short"):
        return f"{key}: expected {type_name(tp)}, got {len(value)} values: {shown}"
    if kind in ("too_short", "string_too_short"):
        return f"{key}: must not be empty" if kind == "string_too_short" else f"{key}: must list at least one value"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{key}: {shown} is out of range, expected a value {_bounds(tp)}"
    if kind == "finite_number":
        return f"{key}: expected a finite number, got {shown}"
    if len(used) < len(loc) or kind.endswith(("_type", "_parsing", "_error", "_from_float", "_fraction")):
        return f"{key}: expected {type_name(tp)}, got {shown}"
    return f"{key}: {error['msg']}"


def _show(value: Any, limit: int = 60) -> str:
    """A value as an error message quotes it: its repr, cut short (a hostile file may hold a huge one)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
