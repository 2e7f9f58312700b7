"""Reading a run config: YAML (safe loader), ``--set`` overrides, strict typed coercion, dumping.

Errors are :class:`ConfigError` with one line naming the file and the dotted key, so a typo in a
search file is caught before any trial starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from localization.config.schema import RunConfig
from localization.config.validation import validate
from localization.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "--set") -> None:
    """Apply ``dotted.key=value`` strings in place; values are parsed as YAML."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{source}: expected dotted.key=value, got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"{source}: {key}: value {text!r} is not valid YAML") from None
        set_dotted(raw, key, value, source)


def set_dotted(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set ``raw[a][b][c] = value`` for key ``a.b.c``, creating mappings on the way."""
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"{source}: {key}: {prefix} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file (if any), then ``--set`` overrides; validated."""
    raw = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source)


def config_from_dict(raw: dict[str, Any], source: str) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a plain mapping (YAML already parsed)."""
    cfg = build_section(RunConfig, raw, "", source, RunConfig())
    validate(cfg, source)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON ready) of a config dataclass."""
    return dataclasses.asdict(cfg)


def flatten(cfg: Any) -> dict[str, Any]:
    """``{"data.max_seq_len": 2304, ...}``: every leaf of a config dataclass (or nested dict) under its dotted key."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = node

    walk(cfg if isinstance(cfg, dict) else to_dict(cfg), "")
    return out


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML, loadable by :func:`load_config`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------------------------
# Type coercion: strict, with messages that name the key
# --------------------------------------------------------------------------------------------


def build_section(cls: type, raw: Any, prefix: str, source: str, base: Any | None) -> Any:
    """Overlay mapping ``raw`` on dataclass instance ``base`` key by key (strict types, one-line errors).

    Public so that other config files (the runner's search file) read the same way.

    ``base`` is None for a new entry (for example a new stream): then every field without a
    default must be present in ``raw``.
    """
    where = prefix or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    values = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{source}: {dotted}: unknown key (expected one of {names})")
        values[key] = _coerce(value, hints[key], dotted, source, getattr(base, key) if base is not None else None)
    if base is not None:
        return dataclasses.replace(base, **values)
    missing = [
        f.name
        for f in fields
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: {where}: missing required key(s) {missing}")
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, source: str, current: Any = None) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, key, source, current)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, source, current)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[-1]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {_kind(value)}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {_kind(value)}")
        merged = dict(current or {})
        for name, item in value.items():
            merged[name] = _coerce(item, args[1], f"{key}.{name}", source, merged.get(name))
        return merged
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        return _to_float(value, key, source)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a schema bug, not user input


def _to_float(value: Any, key: str, source: str) -> float:
    """Numbers, and strings such as ``1e-4`` that PyYAML (YAML 1.1) leaves as strings."""
    if isinstance(value, bool):
        raise ConfigError(f"{source}: {key}: expected a number, got {_kind(value)}")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}") from None
    else:
        raise ConfigError(f"{source}: {key}: expected a number, got {_kind(value)}")
    if not math.isfinite(result):
        raise ConfigError(f"{source}: {key}: expected a finite number, got {value!r}")
    return result


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return f"{value!r} ({type(value).__name__})"
