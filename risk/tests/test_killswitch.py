from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import override_settings

from marketdata.book import Quote
from marketdata.models import Instrument
from marketdata.storage import SnapshotWriter
from quanthub.clock import IST
from risk.killswitch import run_kill_all
from risk.models import TradingState
from trading.models import Order, PaperAccount, PaperPosition, Position

pytestmark = pytest.mark.django_db(transaction=True)


def _quotes_for(instruments, book, now):
    """Quotes in the live book, and stored as the engine would have stored them."""
    import numpy as np

    from marketdata.feeds.base import ChainSnapshot

    writer = SnapshotWriter()
    for i, inst in enumerate(instruments):
        bid, ask = 100.0 + i, 100.05 + i
        book.set(Quote(inst.security_id, bid, ask, 100_000, 100_000, bid, now))
        zero = np.zeros(1)
        writer.add_chain(
            ChainSnapshot(
                inst.underlying.symbol,
                inst.expiry,
                now,
                now + dt.timedelta(microseconds=i),
                24500.0,
                np.array([inst.security_id]),
                np.array([float(inst.strike)]),
                np.array([0], dtype=np.int8),
                np.array([bid]),
                np.array([1], dtype=np.int64),
                np.array([1], dtype=np.int64),
                np.array([1], dtype=np.int64),
                np.array([bid]),
                np.array([ask]),
                np.array([100_000]),
                np.array([100_000]),
                zero,
                zero,
                zero,
                zero,
                zero,
            )
        )
    for sid in ("13", "25"):
        book.set(Quote(sid, 24499.95, 24500.05, 10**6, 10**6, 24500.0, now))
    writer.flush()


async def _open_legs(oms, book, count):
    now = dt.datetime.now(tz=IST)
    instruments = await sync_to_async(
        lambda: list(
            Instrument.objects.select_related("underlying")
            .filter(kind__in=["CE", "PE"], is_active=True)
            .order_by("underlying__symbol", "strike", "kind")[:count]
        )
    )()
    await sync_to_async(_quotes_for)(instruments, book, now)
    await buy_two_lots(oms, book, instruments)
    return instruments


async def buy_two_lots(oms, book, instruments) -> None:
    """Two lots of each instrument at the ask, through the real OMS (filled at once by the paper broker)."""
    for inst in instruments:
        order = await oms.submit(
            instrument=inst,
            side="BUY",
            quantity=inst.lot_size * 2,
            limit_price=Decimal(str(book.get(inst.security_id).ask)),
            check_slippage_rule=False,
        )
        assert order.state == Order.State.FILLED


async def test_kill_all_empties_18_legs_with_the_engine_stopped(oms, book, demo_market, capsys):
    from asgiref.sync import sync_to_async as s2a

    await _open_legs(oms, book, 18)
    assert await Position.objects.exclude(net_quantity=0).acount() == 18
    # The engine is gone: run_kill_all builds its own broker and OMS, pricing from stored quotes.
    summary = await s2a(run_kill_all, thread_sensitive=False)("risk1", "test", timeout_s=20)
    assert summary.legs == 18 and summary.sent == 18 and summary.flat, summary
    assert summary.kill_switch is True and summary.errors == []
    assert not await PaperPosition.objects.exclude(net_quantity=0).aexists()
    assert not await Position.objects.exclude(net_quantity=0).aexists()
    assert (await TradingState.objects.aget(account="default")).state == TradingState.State.HALTED
    assert (await PaperAccount.objects.aget(account="default")).kill_switch_active


@override_settings(
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:6399/0"]},
        }
    }
)
async def test_kill_all_works_with_redis_down(oms, book, demo_market):
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    await _open_legs(oms, book, 4)
    from risk.killswitch import kill_all

    summary = await kill_all(broker=oms.broker, oms=oms, actor="trader1", reason="redis is down", timeout_s=10)
    channel_layers.backends.clear()
    assert summary.flat and summary.filled == 4 and summary.kill_switch


async def test_the_command_reports_a_summary(oms, book, demo_market, capsys):
    await _open_legs(oms, book, 2)
    await sync_to_async(call_command, thread_sensitive=False)("kill_all", "--actor", "ops", "--reason", "drill")
    out = capsys.readouterr().out
    assert "2 legs, 2 exits sent" in out and "FLAT" in out and "kill switch on" in out


async def test_the_daily_loss_cap_flattens_and_halts_until_the_next_session(oms, book, demo_market):
    from risk.breakers import enforce_daily_loss, next_session_open
    from risk.models import BreakerTrip

    await _open_legs(oms, book, 3)
    now = dt.datetime.now(tz=IST)
    summary = await enforce_daily_loss(
        broker=oms.broker, oms=oms, net_pnl=Decimal("-26000"), cap=Decimal("25000"), now=now
    )
    assert summary.flat and summary.kill_switch is False  # flattened; the broker switch stays for Kill All
    state = await TradingState.objects.aget(account="default")
    assert state.state == TradingState.State.HALTED and state.halted_until == next_session_open(now)
    assert await BreakerTrip.objects.filter(breaker="daily_loss").aexists()
    assert not await Position.objects.exclude(net_quantity=0).aexists()
    assert (
        await enforce_daily_loss(broker=oms.broker, oms=oms, net_pnl=Decimal("-100"), cap=Decimal("25000"), now=now)
        is None
    )
