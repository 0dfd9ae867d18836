"""Typed, validated strategy configuration.

A strategy's config is a frozen dataclass whose fields carry their bounds in
``metadata``. ``from_params`` turns the admin's JSON into a config or raises
``StrategyConfigError`` listing every bad field, so a risk manager sees all
mistakes at once and a bad edit never reaches the engine.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar, Self


class StrategyConfigError(ValueError):
    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = messages


def bounded(default: Any, *, minimum: float | None = None, maximum: float | None = None, help: str = ""):
    return dataclasses.field(default=default, metadata={"min": minimum, "max": maximum, "help": help})


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    _types: ClassVar[dict[str, Any]]

    @classmethod
    def _field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> Self:
        params = dict(params or {})
        if not isinstance(params, dict):
            raise StrategyConfigError(["params must be a JSON object"])
        types = cls._field_types()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        errors = [f"{name}: unknown parameter" for name in sorted(set(params) - set(fields))]
        values: dict[str, Any] = {}
        for name, field in fields.items():
            if name not in params:
                continue
            raw = params[name]
            expected = types[name]
            try:
                value = _coerce(raw, expected)
            except (TypeError, ValueError):
                errors.append(f"{name}: expected {_type_name(expected)}, got {raw!r}")
                continue
            low, high = field.metadata.get("min"), field.metadata.get("max")
            if low is not None and isinstance(value, int | float) and value < low:
                errors.append(f"{name}: must be at least {low}, got {value}")
                continue
            if high is not None and isinstance(value, int | float) and value > high:
                errors.append(f"{name}: must be at most {high}, got {value}")
                continue
            values[name] = value
        if errors:
            raise StrategyConfigError(errors)
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Cross-field rules; override and raise StrategyConfigError."""

    def to_params(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def schema(cls) -> dict[str, dict[str, Any]]:
        types = cls._field_types()
        return {
            f.name: {
                "type": _type_name(types[f.name]),
                "default": list(f.default) if isinstance(f.default, tuple) else f.default,
                "min": f.metadata.get("min"),
                "max": f.metadata.get("max"),
                "help": f.metadata.get("help", ""),
            }
            for f in dataclasses.fields(cls)
        }


def _type_name(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin is tuple:
        return "list of " + _type_name(typing.get_args(expected)[0])
    return getattr(expected, "__name__", str(expected))


def _coerce(raw: Any, expected: Any) -> Any:
    if typing.get_origin(expected) is tuple:
        if not isinstance(raw, list | tuple):
            raise TypeError
        item_type = typing.get_args(expected)[0]
        return tuple(_coerce(item, item_type) for item in raw)
    if expected is bool:
        if not isinstance(raw, bool):
            raise TypeError
        return raw
    if expected is int:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or int(raw) != raw:
            raise TypeError
        return int(raw)
    if expected is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != raw:
            raise TypeError
        return float(raw)
    if expected is str:
        if not isinstance(raw, str):
            raise TypeError
        return raw
    raise TypeError
