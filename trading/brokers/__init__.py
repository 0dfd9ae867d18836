"""Brokers by name, imported lazily. Chosen once at start-up; nothing else
in the code base asks which broker is running.

Each class implements ``trading.brokers.base.Broker`` and a classmethod
``from_options(*, account, clock, book, **options)``.
"""

from __future__ import annotations

from django.utils.module_loading import import_string

BROKERS = {
    "paper": "trading.brokers.paper.PaperBroker",
    "dhan": "trading.brokers.dhan.DhanBroker",
}


def build_broker(name: str, **options):
    try:
        dotted = BROKERS[name]
    except KeyError:
        raise ValueError(f"Unknown broker {name!r}; choose one of {', '.join(BROKERS)}") from None
    return import_string(dotted).from_options(**options)
