"""Brokers by name, imported lazily. Chosen once at start-up; nothing else
in the code base asks which broker is running.

Each class implements ``trading.brokers.base.Broker`` and a classmethod
``from_options(*, account, clock, book, **options)``.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
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
    broker = import_string(dotted).from_options(**options)
    if settings.QUANTHUB_BROKER_FAULTS:
        # Injected failures are for the simulated account only, never real money.
        if name != "paper":
            raise ImproperlyConfigured("QUANTHUB_BROKER_FAULTS works with the paper broker only")
        from trading.brokers.faults import FaultyBroker, parse_rates

        broker = FaultyBroker(
            broker,
            parse_rates(settings.QUANTHUB_BROKER_FAULTS),
            seed=options.get("seed", 7),
            log_path=settings.QUANTHUB_BROKER_FAULTS_LOG,
        )
    return broker
