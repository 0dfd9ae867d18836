"""The broker-side safety net, broker-agnostic: what the engine and Kill All ask
of any broker that offers it (Dhan does; the paper broker answers None).

* ``apply_pnl_exit`` — at engine start and whenever the risk limits change:
  set the broker's P&L exit to the daily loss cap plus DHAN_PNL_EXIT_BUFFER
  (so our own daily-loss flatten fires first), with its kill switch enabled,
  read it back, audit it, and alert on a mismatch. Even with our whole stack
  down, the broker then flattens the account at that loss.
* ``kill_switch_check`` — Kill All reads the kill-switch status before and
  after; a status that is not what Kill All expects is an alert.
* ``basket_margin_per_lot`` — the broker's margin calculator for the whole
  basket (legs and hedge) an entry is part of; when it cannot answer, the
  entry is refused (exits never ask).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from audit import actors
from audit.chain import append as audit_append
from quanthub.sql import on_db_thread as _db
from trading.brokers.base import BrokerError, MarginLeg, Side

log = logging.getLogger(__name__)


async def _alert(level: str, title: str, message: str, account: str) -> None:
    from trading.alerts import raise_alert

    try:
        await _db(raise_alert)(level, "broker", title, message, account=account)
    except Exception:  # an alert's own failure never reaches trading
        log.exception("alert failed", extra={"title": title})


async def apply_pnl_exit(broker, limits, *, account: str, at: dt.datetime) -> dict | None:
    """Set, read back and report the broker-side P&L exit. None: the broker has none."""
    wanted = (Decimal(limits.daily_loss_cap) + Decimal(settings.DHAN_PNL_EXIT_BUFFER)).quantize(Decimal("0.01"))
    try:
        applied = await broker.set_pnl_exit(loss=wanted)
        if applied is None:
            return None
        read = await broker.pnl_exit()
    except BrokerError as exc:
        state = {
            "wanted": str(wanted),
            "loss": None,
            "active": False,
            "kill_switch": False,
            "ok": False,
            "error": str(exc)[:200],
            "at": at.isoformat(),
        }
        await _alert(
            "CRITICAL",
            "Broker P&L exit not set",
            f"Setting the broker-side loss exit at ₹{wanted} failed: {exc}",
            account,
        )
        await _db(audit_append)(
            "broker.pnl_exit", actor=actors.component(), subject=f"account:{account}", payload=state, at=at
        )
        return state
    ok = read is not None and read.active and read.loss == wanted and read.kill_switch
    state = {
        "wanted": str(wanted),
        "loss": str(read.loss) if read and read.loss is not None else None,
        "active": bool(read and read.active),
        "kill_switch": bool(read and read.kill_switch),
        "ok": ok,
        "error": "",
        "at": at.isoformat(),
    }
    await _db(audit_append)(
        "broker.pnl_exit", actor=actors.component(), subject=f"account:{account}", payload=state, at=at
    )
    if not ok:
        await _alert(
            "CRITICAL",
            "Broker P&L exit mismatch",
            f"asked for a loss exit at ₹{wanted} with the kill switch; the broker reports "
            f"{'active' if state['active'] else 'inactive'} at ₹{state['loss']} "
            f"(kill switch {'on' if state['kill_switch'] else 'off'})",
            account,
        )
    else:
        log.info("broker P&L exit set", extra={"loss": str(wanted)})
    return state


async def kill_switch_check(broker, *, expect: bool | None, stage: str, account: str) -> bool | None:
    """The kill switch's status; an alert when it is not what ``expect`` says (None: no expectation)."""
    try:
        status = await broker.kill_switch_status()
    except BrokerError as exc:
        await _alert("WARNING", "Kill switch status unknown", f"{stage}: the broker did not say ({exc})", account)
        return None
    if status is not None and expect is not None and status != expect:
        await _alert(
            "CRITICAL",
            "Kill switch mismatch",
            f"{stage}: the broker's kill switch is {'on' if status else 'off'}, expected {'on' if expect else 'off'}",
            account,
        )
    return status


@dataclass(frozen=True, slots=True)
class Basket:
    per_lot: Decimal | None  # the broker's margin per lot of the basket; None: use our model
    error: str | None = None  # the calculator could not answer: entries are refused


async def basket_margin_per_lot(broker, intents, instruments: dict) -> Basket | None:
    legs, lots = [], 0
    for intent in intents:
        if intent.reduces_exposure:
            continue
        instrument = instruments.get(intent.security_id)
        if instrument is None or intent.limit_price is None:
            continue
        quantity = intent.lots * instrument.lot_size
        legs.append(
            MarginLeg(
                intent.security_id,
                instrument.exchange_segment,
                Side(intent.side),
                quantity,
                Decimal(intent.limit_price),
            )
        )
        lots += intent.lots
    if not legs:
        return None
    try:
        margin = await broker.basket_margin(legs)
    except BrokerError as exc:
        return Basket(None, f"{type(exc).__name__}: {exc}"[:200])
    if margin is None:
        return None
    return Basket((margin.total / max(lots, 1)).quantize(Decimal("0.01")))
