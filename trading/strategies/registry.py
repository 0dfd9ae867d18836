"""Strategies by registry key, imported lazily from dotted paths.

``settings.QUANTHUB_STRATEGIES`` maps a key to the dotted path of its class.
Nothing is imported until a strategy is asked for, and ``reload`` drops the
cache so a code change or a new entry is picked up by a running engine.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils.module_loading import import_string

from trading.strategies.config import StrategyConfigError

if TYPE_CHECKING:
    from trading.strategies.base import Strategy

__all__ = ["StrategyConfigError", "UnknownStrategy", "get_strategy_class", "reload", "validate_params"]


class UnknownStrategy(LookupError):
    pass


def registered_keys() -> list[str]:
    return sorted(settings.QUANTHUB_STRATEGIES)


@cache
def get_strategy_class(key: str) -> type[Strategy]:
    try:
        dotted = settings.QUANTHUB_STRATEGIES[key]
    except KeyError:
        known = ", ".join(registered_keys()) or "none"
        raise UnknownStrategy(f"No strategy is registered as {key!r} (registered: {known})") from None
    return import_string(dotted)


def validate_params(key: str, params: dict[str, Any]) -> dict[str, Any]:
    """Return the params normalised by the strategy's config (defaults filled in)."""
    return get_strategy_class(key).config_class.from_params(params).to_params()


def reload() -> None:
    get_strategy_class.cache_clear()
