"""Whether the configuration an engine follows may have changed since it last looked.

An engine follows its strategies' rows (parameters, the enabled switch) and the
active risk limits. It asks the database whether they changed (two one-column
queries) when this process saved one of them since it last looked — a save
counts once it is committed — and otherwise at most once every
``RECHECK_S`` of wall time, for what another process changes (the admin in the
web server, an ``update()`` that sends no signal). Live, that is every second,
as before; a replay at full speed no longer asks at every simulated second.
"""

from __future__ import annotations

import itertools

from django.db import transaction
from django.db.models.signals import post_delete, post_save

from risk.models import RiskLimits
from trading.models import Strategy

RECHECK_S = 1.0

_counter = itertools.count(1)
_generation = 0


def generation() -> int:
    """Moves on with every committed save or delete of a strategy or a set of limits in this process."""
    return _generation


def _bump() -> None:
    global _generation
    _generation = next(_counter)


def _changed(sender, **kwargs) -> None:
    transaction.on_commit(_bump, using=kwargs.get("using"))


for _model in (Strategy, RiskLimits):
    post_save.connect(_changed, sender=_model, dispatch_uid=f"engine-config-{_model.__name__}-save")
    post_delete.connect(_changed, sender=_model, dispatch_uid=f"engine-config-{_model.__name__}-delete")
