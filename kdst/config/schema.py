"""Frozen dataclasses from plain YAML values: the one place that decides what a config may say.

``build(cls, raw, path)`` makes a ``cls`` from a mapping and rejects, with the key path
of the offending value (``train.epochz``, ``model.encoder.heads``):

- a key the dataclass has no field for (with the nearest field name as a suggestion);
- a value of the wrong type: the field's annotation is the schema (``int``, ``float``,
  ``bool``, ``str``, ``X | None``, ``Literal[...]``, ``tuple[float, float]``, a nested
  dataclass, a union of dataclasses told apart by their ``type`` field, or a value or a list
  of them, ``str | tuple[str, ...]``);
- a value out of range: each dataclass checks its own fields in ``__post_init__`` with
  :func:`require`, which names the field; ``build`` prefixes the section's path.

Why not a library (pydantic, OmegaConf): kdst's configs are small, the rules fit in
this file, and every error must be one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

from kdst.errors import KdstError


class ConfigError(KdstError):
    """A config value kdst cannot use; ``key`` is its dotted path (empty for the whole config)."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}" if key else message)


def require(condition: bool, key: str, message: str) -> None:
    """In ``__post_init__``: a range check on field ``key`` of this section."""
    if not condition:
        raise ConfigError(key, message)


# Keys kdst used to take, and what to write instead: said rather than "unknown key".
RENAMED = {
    "kd.teacher_espnet": "kd.teacher: espnet:PATH",
    "kd.teacher_src_text": "kd.src_text",
}


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def build(cls: type, raw: Any, path: str = ""):
    """A ``cls`` (a dataclass) from the mapping ``raw`` found at ``path`` of the config."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a mapping of options, got {_describe(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            raise ConfigError(join(path, str(key)), _unknown_key(str(key), fields, path))
    hints = typing.get_type_hints(cls)
    # A union of sections whose untyped variant depends on a sibling key (the encoder on model.input)
    defaults = cls.variant_defaults(raw) if hasattr(cls, "variant_defaults") else {}
    values = {}
    for name in fields:
        if name in raw:
            values[name] = convert(hints[name], raw[name], join(path, name), defaults.get(name))
        elif _required(fields[name]):
            raise ConfigError(join(path, name), "missing (this key has no default)")
    try:
        return cls(**values)
    except ConfigError as e:  # a range check in __post_init__, relative to this section
        raise ConfigError(join(path, e.key), e.message) from None


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _unknown_key(key: str, fields: dict, path: str) -> str:
    full = join(path, key)
    if full in RENAMED:
        return f"no longer a key: write {RENAMED[full]}"
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    hint = f"did you mean {join(path, close[0])}?" if close else f"known: {', '.join(fields)}"
    return f"unknown key ({hint})"


def convert(annotation: Any, value: Any, path: str, variant: type | None = None) -> Any:
    """``value`` as the type ``annotation`` says, or a ConfigError naming ``path``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) > 1 and all(dataclasses.is_dataclass(a) for a in options):
            return build(_variant(options, value, path, variant), value, path)
        if len(options) == 1:
            return convert(options[0], value, path)
        lists = [a for a in options if typing.get_origin(a) is tuple]
        if len(options) == 2 and len(lists) == 1:  # one value or a list of them (kd.teacher: A or [A, B])
            single = next(a for a in options if a is not lists[0])
            return convert(lists[0] if isinstance(value, (list, tuple)) else single, value, path)
        raise TypeError(f"{path}: unsupported annotation {annotation}")  # a schema bug, not a user error
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"'{value}' is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(path, f"expected {len(args)} values, got {len(value)}")
        return tuple(convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, path)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {_describe(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {_describe(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(path, f"expected a number, got {_describe(value)}")
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(path, f"expected a number, got {_describe(value)}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {_describe(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"{path}: unsupported annotation {annotation}")


def _variant(options: list[type], value: Any, path: str, preferred: type | None) -> type:
    """The dataclass of a union that ``value["type"]`` names; without a type (or with one that the
    ``preferred`` variant has too) the preferred one, else the first."""
    preferred = preferred or options[0]
    by_type = {}
    for cls in [preferred, *options]:
        for name in typing.get_args(typing.get_type_hints(cls)["type"]):
            by_type.setdefault(name, cls)
    kind = value.get("type") if isinstance(value, dict) else None
    if kind is None:
        return preferred
    if kind not in by_type:
        raise ConfigError(join(path, "type"), f"'{kind}' is not one of {', '.join(by_type)}")
    return by_type[kind]


def _describe(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"{type(value).__name__} {value!r}"


def to_dict(config) -> dict:
    """Plain YAML-safe values (tuples as lists) of a config dataclass."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def differences(old, new, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs of the same class (or None)."""
    if dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new) and type(old) is type(new):
        found = []
        for f in dataclasses.fields(old):
            found += differences(getattr(old, f.name), getattr(new, f.name), join(path, f.name))
        return found
    return [] if old == new else [path or "(whole config)"]
