"""Every record of a simulated session names its actor in the one convention
(``audit.actors``, docs/risk-and-audit.md): the engine's parts as the engine,
people as users, commands as their OS user."""

from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command

from audit.actors import ACTOR_RE
from audit.models import AuditRecord
from trading.conftest import sim_engine
from trading.models import Strategy
from trading.services import set_strategy_enabled

pytestmark = pytest.mark.django_db(transaction=True)


async def test_every_actor_of_a_simulated_session_follows_the_convention(enabled, capsys):
    engine, _ = await sync_to_async(sim_engine)(dt.time(9, 15), dt.time(9, 18))
    await engine.run()  # the 09:16:30 probe and its hedge are held at the end
    strategy = await Strategy.objects.aget(key="vol_oi")
    await sync_to_async(set_strategy_enabled)(strategy, False, actor="user:risk1")
    # No engine runs now: the command works the Kill All itself, for the one who pressed it.
    await sync_to_async(call_command, thread_sensitive=False)("kill_all", "--actor", "ops", "--reason", "drill")
    assert "FLAT" in capsys.readouterr().out

    records = [r async for r in AuditRecord.objects.order_by("seq").values("actor", "action")]
    assert not [r for r in records if not ACTOR_RE.match(r["actor"])]
    by_actor: dict[str, set[str]] = {}
    for r in records:
        by_actor.setdefault(r["actor"], set()).add(r["action"].split(".")[0])
    # The engine's order manager, strategy and risk side record the engine itself.
    assert {"order", "signal"} <= by_actor[f"engine:{engine.engine_id}"]
    assert by_actor["user:risk1"] == {"strategy"}
    # The standalone Kill All's orders are recorded for the operator who ran it.
    assert {"kill_all", "order"} <= by_actor["cli:ops"]
