"""Feeds by name, imported lazily (a dict of dotted paths, like healthchecks' transports).

Each class implements ``marketdata.feeds.base.Feed`` and a classmethod
``from_options(*, clock, seed, speed, **options)``.
"""

from __future__ import annotations

from django.utils.module_loading import import_string

FEEDS = {
    "sim": "marketdata.feeds.simulator.SimulatorFeed",
    "replay": "marketdata.feeds.replay.ReplayFeed",
    "dhan": "marketdata.feeds.dhan.DhanFeed",
}


def build_feed(name: str, **options):
    try:
        dotted = FEEDS[name]
    except KeyError:
        raise ValueError(f"Unknown feed {name!r}; choose one of {', '.join(FEEDS)}") from None
    return import_string(dotted).from_options(**options)
