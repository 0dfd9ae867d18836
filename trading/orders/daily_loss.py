"""The daily-loss breaker's check, with broker truth.

Every second the engine hands today's net P&L from our books to
``DailyLossGuard.check``. Below the cap nothing happens. At or past it, the
broker's own figure for the day is read (its positions: realised P&L plus the
open quantity marked at our book's mid, less our charges) and the pure rule
``risk.breakers.confirm_daily_loss`` decides:

* the broker confirms the loss (or cannot say: an outage never lifts the cap)
  → the breaker trips: ``flatten.daily_loss_flatten`` (REDUCING, everything
  flattened, HALTED until the next session);
* the broker's figure is inside the cap → our books are wrong, not the market
  (a fill booked at a wrong price, a lost fill): no flatten and no halt, but the
  account goes REDUCING (no new exposure), one CRITICAL alert names both
  figures, and the broker is asked again every ``RECHECK_S`` seconds. When our
  figure is back inside the cap (reconciliation repaired the books) the account
  returns to ACTIVE, with an alert and an audit record.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

from audit.chain import append as audit_append
from marketdata.ticks import price_on_tick
from quanthub.sql import on_db_thread as _db
from risk.breakers import LossVerdict, confirm_daily_loss
from risk.context import daily_charges
from risk.models import TradingState
from risk.services import set_trading_state
from trading.alerts import raise_alert
from trading.orders import flatten

log = logging.getLogger(__name__)
RECHECK_S = 5.0  # while the broker disagrees, how often it is asked again
ACTOR = "breaker:daily_loss"


class DailyLossGuard:
    def __init__(self, path, start):
        self.path = path
        # Starts the flatten (a coroutine): beside the engine loop live, as a Kill All is;
        # awaited in place in a backtest, so the replayed market does not move under it.
        self._start = start
        self.handled = False  # tripped this session
        self.disputed: LossVerdict | None = None
        self._recheck_at: dt.datetime | None = None  # on the engine's clock, like everything it decides

    def new_session(self) -> None:
        self.handled, self.disputed, self._recheck_at = False, None, None

    async def check(self, now, pnl: Decimal, cap: Decimal) -> None:
        if self.handled:
            return
        if pnl > -cap:
            if self.disputed is not None:
                await _db(self._settled)(now, pnl)
            return
        if self._recheck_at is not None and now < self._recheck_at:
            return
        charges = await _db(daily_charges)(self.path.account, now)
        verdict = confirm_daily_loss(
            ours_net=pnl, ours_charges=charges, broker_gross=await self.broker_gross(), cap=cap
        )
        if verdict.trip:
            self.handled, self.disputed = True, None
            log.warning("daily loss cap reached", extra={"ours": str(pnl), "broker": str(verdict.broker)})
            await self._start(flatten.daily_loss_flatten(self.path, net_pnl=pnl, cap=cap, verdict=verdict.why))
            return
        self._recheck_at = now + dt.timedelta(seconds=RECHECK_S)
        if self.disputed is None:
            self.disputed = verdict
            await _db(self._dispute)(now, verdict, cap)

    async def broker_gross(self) -> Decimal | None:
        """The broker's P&L for the day before charges, or None when it cannot be known
        (no report, or an open position our book has no price for)."""
        try:
            positions = await self.path.broker.positions()
        except Exception as exc:  # an outage: our books decide (see the rule)
            log.warning("broker positions unavailable for the daily loss check", extra={"error": repr(exc)})
            return None
        instruments = await _db(flatten._instruments)({p.security_id for p in positions if p.net_quantity})
        total = Decimal("0")
        for p in positions:
            total += p.realised_pnl
            if not p.net_quantity:
                continue
            quote = self.path.oms.book.get(p.security_id)
            instrument = instruments.get(p.security_id)
            if quote is None or instrument is None or quote.bid <= 0 or quote.ask <= 0:
                return None
            mark = price_on_tick(instrument, (quote.bid + quote.ask) / 2)
            total += (mark - p.average_price) * p.net_quantity
        return total

    def _dispute(self, now, verdict: LossVerdict, cap: Decimal) -> None:
        account = self.path.account
        reason = f"daily loss not confirmed by the broker: {verdict.why}"
        set_trading_state(
            TradingState.State.REDUCING,
            actor=ACTOR,
            reason=reason,
            account=account,
            expected=TradingState.State.ACTIVE,
            at=now,
        )
        audit_append(
            "risk.daily_loss_disputed",
            actor=ACTOR,
            subject=f"account:{account}",
            payload={"ours": str(verdict.ours), "broker": str(verdict.broker), "cap": str(cap)},
            at=now,
        )
        raise_alert(
            "CRITICAL",
            "risk",
            "Daily loss not confirmed by the broker: books need reconciling",
            f"Our books: ₹{verdict.ours}; the broker's figure: ₹{verdict.broker} (cap ₹{cap}). "
            "No flatten and no halt on our books alone; new entries are stopped until they agree.",
            account=account,
            at=now,
        )

    def _settled(self, now, pnl: Decimal) -> None:
        account = self.path.account
        self.disputed = None
        ours = TradingState.objects.filter(account=account, actor=ACTOR, state=TradingState.State.REDUCING).exists()
        resumed = ours and set_trading_state(
            TradingState.State.ACTIVE,
            actor=ACTOR,
            reason="daily loss figures agree again",
            account=account,
            expected=TradingState.State.REDUCING,
            at=now,
        )
        audit_append(
            "risk.daily_loss_settled",
            actor=ACTOR,
            subject=f"account:{account}",
            payload={"ours": str(pnl), "resumed": bool(resumed)},
            at=now,
        )
        raise_alert(
            "INFO",
            "risk",
            "Daily loss figures agree again" + (": trading resumed" if resumed else ""),
            f"Our books now say ₹{pnl}, inside the cap.",
            account=account,
            at=now,
        )
