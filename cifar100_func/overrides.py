"""``--set dotted.key=value``: each value parsed as YAML, each key checked against the schema's sections.

The values are left raw, for the schema (:mod:`cifar100_func.config`) to validate with the rest of the file.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import yaml

from .errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.optimizer.lr=0.005"`` -> (["train", "optimizer", "lr"], 0.005); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. --set train.optimizer.lr=0.005")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an int of more than 4300 digits
        shown = raw if len(raw) <= 60 else raw[:57] + "..."
        raise ConfigError(f"--set {key}: cannot parse value {shown!r} as YAML ({first_line(exc)})") from None
    return key.split("."), value


def apply_overrides(schema: type, data: dict, overrides: list[str]) -> dict:
    """A copy of the raw mapping ``data`` with each ``dotted.key=value`` applied; each dotted key must name a
    field of the dataclass ``schema`` (sections down to a value)."""
    data = _copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        cls: Any = schema
        for depth, part in enumerate(path):
            dotted = ".".join(path[: depth + 1])
            names = [f.name for f in dataclasses.fields(cls)]
            if part not in names:
                raise ConfigError(f"--set {dotted}: no such key (known keys: {', '.join(sorted(names))})")
            cls = typing.get_type_hints(cls)[part]
            if depth == len(path) - 1:
                node[part] = value
            elif not dataclasses.is_dataclass(cls):
                raise ConfigError(f"--set {dotted}: is a value, not a section")
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {dotted}: is a section in the schema but not in the config file")
    return data


def _copy(obj: Any) -> Any:
    return {k: _copy(v) for k, v in obj.items()} if isinstance(obj, dict) else obj


def first_line(exc: Exception) -> str:
    """An exception's message on one line (YAML errors span several)."""
    return " ".join(str(exc).split())
