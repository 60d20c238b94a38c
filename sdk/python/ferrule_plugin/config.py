"""The stage's config: the host passes the stage's `config` table to `init` as JSON text.
`Config.parse(MyConfig)` turns it into a dataclass, checking types, refusing unknown keys,
filling defaults, and naming where anything is wrong (`rules[1].low: expected a number`)."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Dict, List, Optional, Type, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A config the plugin refuses; `path` names the key (e.g. `rules[1].low`)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"invalid config at `{path}`: {message}" if path else f"invalid config: {message}")


class Config:
    """The stage's `config` table (a dict parsed from the JSON the host passes)."""

    def __init__(self, raw: Optional[Dict[str, Any]] = None) -> None:
        self.raw: Dict[str, Any] = {} if raw is None else raw

    @staticmethod
    def from_json(text: str) -> "Config":
        if not text.strip():
            return Config({})
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError("", f"not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError("", f"expected a table, got {_kind(raw)}")
        return Config(raw)

    def parse(self, cls: Type[T]) -> T:
        """Deserialises into the dataclass `cls` (nested dataclasses, `list[...]`,
        `dict[str, ...]`, `Optional[...]`, `Literal[...]`, `int`, `float`, `str`, `bool`).
        Unknown keys are refused; a field without a default is required. A `ValueError`
        raised by a dataclass's `__post_init__` is reported at that dataclass's path."""
        return _convert(self.raw, cls, "")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({json.dumps(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(value: Any, ty: Any, path: str) -> Any:
    origin = typing.get_origin(ty)
    args = typing.get_args(ty)
    if ty is Any:
        return value
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) != len(args):
            return None
        if len(inner) == 1:
            return _convert(value, inner[0], path)
        errors = []
        for a in inner:
            try:
                return _convert(value, a, path)
            except ConfigError as e:
                errors.append(e.message)
        raise ConfigError(path, " or ".join(errors))
    if origin is typing.Literal:
        if value in args and not isinstance(value, bool):
            return value
        allowed = ", ".join(json.dumps(a) for a in args)
        raise ConfigError(path, f"expected one of {allowed}, got {_kind(value)}")
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(path, f"expected an array, got {_kind(value)}")
        (item,) = args or (Any,)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a table, got {_kind(value)}")
        item = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, item, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(ty):
        return _dataclass(value, ty, path)
    if ty is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected a boolean, got {_kind(value)}")
    if ty is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(path, f"expected an integer, got {_kind(value)}")
    if ty is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(path, f"expected a number, got {_kind(value)}")
    if ty is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, f"expected a string, got {_kind(value)}")
    raise TypeError(f"config type {ty!r} at `{path}` is not supported by ferrule_plugin.Config")


def _dataclass(value: Any, cls: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a table, got {_kind(value)}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in fields}
    for key in value:
        if key not in names:
            expected = ", ".join(f"`{n}`" for n in sorted(names))
            raise ConfigError(_join(path, str(key)), f"unknown key; expected one of {expected}")
    kwargs = {}
    for f in fields:
        if f.name in value:
            kwargs[f.name] = _convert(value[f.name], hints[f.name], _join(path, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_join(path, f.name), "missing (required)")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(path, str(e)) from None
