"""Configuration loading shared by every role.

Each role has a frozen dataclass of typed settings with defaults. Values are
layered: defaults, then the YAML file, then environment, then flags. This
module does the layering and the type checks so every role reports a bad
value the same way: one ConfigError naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from common.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Read a YAML mapping; a missing `path` (None) gives {}."""
    if path is None:
        return {}
    p = pathlib.Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    import yaml  # here: ~20 ms of every start-up, and most runs have no config file

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings at the top level")
    return data


def build(cls: type[T], *layers: Mapping[str, Any], origin: str = "config") -> T:
    """Make a `cls` dataclass from defaults overlaid with each layer in turn.

    None values in a layer mean "not set" and are skipped. Unknown keys and
    values of the wrong type raise ConfigError.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for layer in layers:
        here: set[str] = set()
        for key, value in layer.items():
            name = key.replace("-", "_")
            if name not in fields:
                known = ", ".join(sorted(fields))
                raise ConfigError(f"{origin}: unknown setting {key!r} (known: {known})")
            if value is None:
                continue
            values[name] = _coerce(value, hints[name], f"{origin}: {key}")
            partner = secret_partner(name)
            if partner in here:
                raise ConfigError(f"{origin}: give {name} or {partner}, not both")
            if partner in fields:  # a higher layer's token replaces a lower one's file
                values.pop(partner, None)
            here.add(name)
    return cls(**values)


def secret_partner(name: str) -> str:
    """The other form of a secret setting: X_token <-> X_token_file ("" for other names)."""
    if name.endswith("_token"):
        return name + "_file"
    if name.endswith("_token_file"):
        return name.removesuffix("_file")
    return ""


def env_layer(prefix: str, cls: type) -> dict[str, str]:
    """Settings from environment variables PREFIX_NAME (e.g. MFETCH_TRACKER)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = os.environ.get(f"{prefix}_{f.name.upper()}")
        if value not in (None, ""):
            out[f.name] = value
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return origin(_coerce(v, item, where) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    """Split HOST:PORT (or [V6]:PORT); raise ConfigError on anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bad {what} {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def parse_bool(value: Any, where: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case); raises ConfigError naming `where`."""
    return bool(_coerce(value, bool, where))
