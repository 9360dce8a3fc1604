"""Dotted overrides of a frozen config: ``override(cfg, {"stage3.epochs": 10, "model.sii": "attention"})``.

The one path for changing an :class:`~csdn.config.ExperimentConfig` after its profile: the CLI's flags,
``--set key=value`` and ``--config file``, the ablation's variants and the notebooks' parameters cells all
go through :func:`override`. A key is a dotted path of field names into the nested frozen dataclasses
(``seed``, ``stage3.epochs``, ``clip.pretrain.epochs``); a nested mapping is read as dotted keys. Each value
is checked against its field's type: ``int``, ``float`` (an int is accepted), ``bool``, ``str``,
``X | None``, ``tuple[...]`` (a list is accepted) and nested configs (an instance, never a scalar). Each
level is rebuilt once with :func:`dataclasses.replace`, so its ``__post_init__`` checks run. Every problem
is one :class:`~csdn.errors.ConfigError` that names the key (and, for an unknown key, the valid ones).

Values from text (``--set``, YAML/JSON files) are read as YAML: ``10``, ``1e-3``, ``true``, ``null``,
``[20, 30]``, ``attention``; an empty value is ``null``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from csdn.errors import ConfigError

C = TypeVar("C")
FILE_SUFFIXES = (".yaml", ".yml", ".json")
# YAML 1.1 reads "1e-3" and "3E5" as strings (its floats need a dot); a number is what is meant.
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def override(cfg: C, changes: Mapping[str, Any]) -> C:
    """``cfg`` (a frozen dataclass) with each dotted key of ``changes`` set; checked, then rebuilt level by level."""
    return _build(cfg, _checked(type(cfg), flatten(changes), ""), "")


def check_overrides(config_type: type, changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` as dotted keys, each checked (key and type) against the dataclass ``config_type``."""
    flat = flatten(changes)
    _checked(config_type, flat, "")
    return flat


def flatten(changes: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: ``{"stage3": {"epochs": 3}}`` -> ``{"stage3.epochs": 3}``."""
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
            raise ConfigError(f"override key {prefix}{key!r} is not a dotted field path (e.g. 'stage3.epochs')")
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """``"stage3.epochs=10"`` -> ``("stage3.epochs", 10)``: the value read as YAML (empty: None)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. stage3.epochs=10 or model.sii=attention)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_one_line(error)})") from None
    return key.strip(), _numbers(value)


def parse_overrides(texts: Iterable[str]) -> dict[str, Any]:
    """``["stage3.epochs=10", "model.sii=attention"]`` as one dict of dotted overrides (a later key wins)."""
    return dict(parse_override(text) for text in texts)


def load_overrides(path: str | Path, config_type: type | None = None) -> dict[str, Any]:
    """The dotted overrides of a ``.yaml``/``.yml``/``.json`` file (nested mappings flattened to dotted keys).

    With ``config_type`` (e.g. :class:`~csdn.config.ExperimentConfig`) every key and value is checked too;
    any problem is a :class:`~csdn.errors.ConfigError` that names the file.
    """
    path = Path(path)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise ConfigError(f"{path}: an overrides file must end in {', '.join(FILE_SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the overrides file ({error})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else _numbers(yaml.safe_load(text))
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise ConfigError(f"{path}: not valid {kind} ({_one_line(error)})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{path}: expected a mapping of keys to values (e.g. 'stage3.epochs: 10'), got a {type(data).__name__}"
        )
    try:
        return check_overrides(config_type, data) if config_type is not None else flatten(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def setting(cfg: Any, dotted: str) -> Any:
    """The value at the dotted path ``dotted`` of a (nested) config, e.g. ``setting(cfg, "data.height")``."""
    for name in dotted.split("."):
        cfg = getattr(cfg, name)
    return cfg


def format_overrides(changes: Mapping[str, Any]) -> str:
    """``key=value`` pairs as ``--set`` would take them (``"none"`` when empty), for reports and logs."""
    return ", ".join(f"{key}={format_value(value)}" for key, value in changes.items()) or "none"


def format_value(value: Any) -> str:
    """``value`` as text that :func:`parse_override` reads back to it (JSON, or a plain string)."""
    if not isinstance(value, str):
        return json.dumps(value, default=str)
    try:
        plain = parse_override(f"k={value}")[1] == value
    except ConfigError:
        plain = False
    return value if plain else json.dumps(value)


# -- checking -----------------------------------------------------------------------------------------


@functools.cache
def field_types(config_type: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of the dataclass ``config_type`` (its init fields, in order)."""
    hints = typing.get_type_hints(config_type)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config_type) if f.init}


def _checked(config_type: type, flat: Mapping[str, Any], path: str) -> dict[str, Any]:
    """``flat`` as a tree ``{field: value or subtree}``, each key known and each value of its field's type."""
    types_ = field_types(config_type)
    groups: dict[str, dict[str, Any]] = {}
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        name, _, rest = key.partition(".")
        if name not in types_:
            raise _unknown(path + key, path, list(types_))
        if rest:
            groups.setdefault(name, {})[rest] = value
        else:
            tree[name] = _coerce(value, types_[name], path + name)
    for name, sub in groups.items():
        inner = types_[name]
        if not (isinstance(inner, type) and dataclasses.is_dataclass(inner)):
            first = next(iter(sub))
            raise ConfigError(
                f"unknown key '{path}{name}.{first}': {path}{name} is a value "
                f"({_type_name(inner)}), not a config section"
            )
        if name in tree:
            raise ConfigError(
                f"{path}{name} is set both as a whole and field by field ({path}{name}.{next(iter(sub))})"
            )
        tree[name] = _checked(inner, sub, f"{path}{name}.")
    return tree


def _build(cfg: C, tree: Mapping[str, Any], path: str) -> C:
    changes = {
        name: _build(getattr(cfg, name), sub, f"{path}{name}.") if isinstance(sub, dict) else sub
        for name, sub in tree.items()
    }
    try:
        return dataclasses.replace(cfg, **changes)
    except ValueError as error:  # a __post_init__ check (ConfigError or a plain ValueError)
        where = ", ".join(f"{key}={format_value(value)}" for key, value in flatten(tree, path).items())
        raise ConfigError(f"{where}: {error}") from None


def _coerce(value: Any, field_type: Any, key: str) -> Any:
    """``value`` as ``field_type`` (int -> float, list -> tuple), or a ConfigError naming ``key``."""
    origin, args = typing.get_origin(field_type), typing.get_args(field_type)
    if field_type is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
    elif origin is tuple and isinstance(value, (list, tuple)):
        return _tuple(value, args, field_type, key)
    elif origin is typing.Literal and value in args:
        return value
    elif isinstance(field_type, type) and dataclasses.is_dataclass(field_type):
        if isinstance(value, field_type):
            return value
        fields = ", ".join(field_types(field_type))
        raise ConfigError(
            f"{key} is a config section ({field_type.__name__}), got {type(value).__name__} {value!r}; "
            f"set its fields instead ({key}.<field>=...); {key} has: {fields}"
        )
    elif field_type is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif field_type is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif field_type in (bool, str) and isinstance(value, field_type):
        return value
    elif origin is None and isinstance(field_type, type) and field_type not in (int, float, bool, str):
        if isinstance(value, field_type):
            return value
    raise ConfigError(f"{key} must be {_type_name(field_type)}, got {type(value).__name__} {value!r}")


def _tuple(value: list | tuple, args: tuple, field_type: Any, key: str) -> tuple:
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{key} must be {_type_name(field_type)} ({len(args)} items), got {list(value)!r}")
    return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def _unknown(key: str, path: str, names: list[str]) -> ConfigError:
    section = path.rstrip(".") or "the config"
    close = difflib.get_close_matches(key.removeprefix(path).partition(".")[0], names, n=1)
    hint = f" (did you mean '{path}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown key '{key}'{hint}; {section} has: {', '.join(names)}")


def _type_name(field_type: Any) -> str:
    plain = isinstance(field_type, type) and typing.get_origin(field_type) is None
    return field_type.__name__ if plain else str(field_type).replace("typing.", "")


def _numbers(value: Any) -> Any:
    """YAML ``value`` with scientific-notation strings (``"1e-3"``) read as floats, at any depth."""
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return value


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
