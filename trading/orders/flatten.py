"""Every way out of a position, in one place.

* ``kill_all`` — HALT, cancel every open order on the account (ours or not),
  flatten what the broker reports, keep working until flat or the deadline,
  then (when flat) the broker's kill switch;
* ``exit_position`` — one position's Exit, with the hedge opened for the same
  signal;
* ``daily_loss_flatten`` — the daily-loss breaker: REDUCING, Kill All's
  flatten without the kill switch, then HALTED until the next session;
* ``follow_touch`` — a resting exit follows the touch (the engine calls it
  every second for its strategies' exits; the loops above every round).

They share one freeze-quantity slicer (``risk.checks.freeze_slices``), one
price rule (``exit_price``: the touch, rounded onto the instrument's tick so
that it still crosses), one claim (``trading.orders.claims``: never two exits
for one quantity) and one re-price loop. Every exit goes through the order
manager and the priority lane of the account's rate limiter; nothing here
builds a broker (``trading.orders.root`` does). Results are built from the
actual order and position states, never from what was attempted.

A reject, a throttle, an unknown outcome or a 5xx on any leg is not the end:
the quantity that is no longer being worked is sent again at the current
touch in the next round, until flat or the deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Q
from django.utils import timezone

from audit.chain import append as audit_append
from marketdata.models import Instrument
from marketdata.ticks import marketable
from quanthub import metrics
from quanthub.sql import on_db_thread as _db
from risk.breakers import next_session_open
from risk.breakers import trip as trip_breaker
from risk.checks import freeze_slices
from risk.models import TradingState
from risk.services import set_trading_state
from trading.alerts import raise_alert
from trading.brokers.base import BrokerStatus, Rejected
from trading.brokers.safety import kill_switch_check
from trading.events import asend_now
from trading.models import Order, Position
from trading.orders.claims import EXIT_PURPOSES, BrokerNet, ExitClaimed, left_to_exit, working_exit_quantity
from trading.orders.manager import NOT_AT_BROKER, OrderRefused

log = logging.getLogger(__name__)
POSITIONS_EVERY_S = 0.5  # the broker's positions are polled at most twice a second
ROUND_S = 0.1  # one round of syncing and re-pricing
OPEN_AT_BROKER = (BrokerStatus.TRANSIT, BrokerStatus.PENDING, BrokerStatus.PART_TRADED)
WORKING = (Order.State.OPEN, Order.State.PARTIAL)


# --- the shared pieces -------------------------------------------------------------------


def exit_side(net_quantity: int) -> str:
    return Order.Side.SELL if net_quantity > 0 else Order.Side.BUY


def slices(quantity: int, instrument) -> tuple[int, ...]:
    """The orders that carry ``quantity``, each at most the freeze quantity."""
    return freeze_slices(quantity, instrument.lot_size, instrument.freeze_quantity)


def exit_price(book, instrument, side: str) -> Decimal | None:
    """The touch (bid to sell, ask to buy) on the instrument's tick, rounded so it still crosses."""
    quote = book.get(instrument.security_id) if book is not None else None
    if quote is None:
        return None
    return marketable(instrument, side, quote.bid if side == Order.Side.SELL else quote.ask)


class Alerts:
    """Alerts of one flatten, each raised once (a leg rejected twenty times is one alert)."""

    def __init__(self, account: str, clock, source: str):
        self.account, self.clock, self.source = account, clock, source
        self._raised: set[str] = set()

    async def once(self, key: str, level: str, title: str, message: str = "") -> None:
        if key in self._raised:
            return
        self._raised.add(key)
        try:
            await _db(raise_alert)(level, self.source, title, message, account=self.account, at=self.clock.now())
        except Exception:  # an alert that cannot be recorded must not stop the flatten
            log.exception("alert could not be raised", extra={"title": title})


async def send_exit(
    oms,
    instrument,
    side: str,
    quantity: int,
    *,
    purpose: str,
    reason: str,
    strategy=None,
    signal=None,
    broker_net: BrokerNet | None = None,
) -> list[Order]:
    """Send ``quantity`` out in freeze-quantity slices at the touch, in the priority lane.

    Each slice is claimed as it is committed; a slice another exit already covers
    is not sent (and neither is the rest).
    """
    price = exit_price(oms.book, instrument, side)
    sent = []
    for part in slices(quantity, instrument):
        try:
            order = await oms.submit(
                instrument=instrument,
                side=side,
                quantity=part,
                limit_price=price,
                purpose=purpose,
                order_type=Order.Type.LIMIT if price else Order.Type.MARKET,
                strategy=strategy,
                signal=signal,
                priority=True,
                check_slippage_rule=False,
                reason=reason,
                claim=broker_net,
            )
        except ExitClaimed as exc:
            log.info("exit already covered", extra={"instrument": instrument.security_id, "why": str(exc)})
            break
        sent.append(order)
    return sent


async def follow_touch(oms, orders: list[Order], alerts: Alerts) -> int:
    """One round of the re-price loop: each resting exit the market moved away from
    goes to the touch. Past the modification cap it is cancelled and its remainder
    sent again at the touch (a new order with a new budget), with an alert. A
    reject or a timeout is tried again next round; an exit that cannot be re-priced
    raises an alert. Returns how many were moved."""
    moved = 0
    for order in orders:
        if order.state not in WORKING or order.limit_price is None:
            continue
        price = exit_price(oms.book, order.instrument, order.side)
        if price is None:
            continue
        away = price < order.limit_price if order.side == Order.Side.SELL else price > order.limit_price
        if not away:
            continue
        try:
            await oms.reprice(order, price)
            moved += 1
        except OrderRefused as exc:
            try:
                await _resend(oms, order, str(exc), alerts)
                moved += 1
            except Exception as again:  # the cancel or the resend failed: the next round tries again
                log.warning("exit resend failed", extra={"order": order.client_order_id, "error": repr(again)})
        except Rejected as exc:
            await alerts.once(
                f"reprice:{order.pk}",
                "WARNING",
                f"Exit {order.client_order_id} could not be re-priced",
                f"{order.instrument.display} to {price}: {exc.code} {exc.message}",
            )
        except Exception as exc:  # a timeout or a dropped connection: the next round tries again
            log.warning("exit re-price failed", extra={"order": order.client_order_id, "error": repr(exc)})
    return moved


async def _resend(oms, order: Order, why: str, alerts: Alerts) -> None:
    cancelled = await oms.cancel(order, reason=f"re-sent at the touch: {why}")
    left = cancelled.quantity - cancelled.filled_quantity
    if cancelled.state != Order.State.CANCELLED or left <= 0:
        return
    sent = await send_exit(
        oms,
        order.instrument,
        order.side,
        left,
        purpose=order.purpose,
        reason=order.reason,
        strategy=order.strategy,
        signal=order.signal,
    )
    price = sent[0].limit_price if sent else None
    await alerts.once(
        f"resend:{order.pk}",
        "WARNING",
        f"Exit {order.client_order_id} re-sent at {price}",
        f"{order.instrument.display}: {why}",
    )


async def _round(oms, broker, order_ids: set[int], alerts: Alerts, result: FlattenResult) -> None:
    """One round of work on the flatten's exits: match, sync, follow the touch. A broker
    or database failure here is noted and the next round tries again: a flatten ends at
    flat or at its deadline, never on an exception."""
    try:
        await broker.on_market_data()
        await oms.sync(drain=False)  # the engine's strategies hear the fills at its next second
        await follow_touch(oms, await _db(_working)(set(order_ids)), alerts)
    except Exception as exc:
        note = f"round: {exc!r}"[:200]
        if note not in result.errors:
            result.errors.append(note)
        log.warning("flatten round failed", extra={"error": repr(exc)})


def _orders(ids) -> list[Order]:
    return list(Order.objects.filter(pk__in=list(ids)).select_related("instrument", "strategy", "signal"))


def _working(ids) -> list[Order]:
    return [o for o in _orders(ids) if o.state in WORKING]


def _any_live(ids) -> bool:
    return Order.objects.filter(pk__in=list(ids), state__in=Order.LIVE_STATES).exists()


# --- the result ---------------------------------------------------------------------------


@dataclass
class Leg:
    security_id: str
    symbol: str
    quantity: int = 0  # net when the flatten began (broker's report, else ours)
    open: int = 0  # net still open at the end (None-safe: the last report)
    sent: int = 0
    filled: int = 0
    rejected: int = 0
    why: list[str] = field(default_factory=list)


@dataclass
class FlattenResult:
    kind: str
    actor: str
    reason: str
    legs: int = 0
    sent: int = 0
    filled: int = 0
    rejected: int = 0
    cancelled: int = 0
    still_open: list[str] = field(default_factory=list)
    flat: bool = False
    kill_switch: bool = False
    sent_s: float | None = None
    flat_s: float | None = None
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    detail: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for a person: the page, the CLI, the admin message."""
        head = "Flat" if self.flat else "NOT FLAT"
        text = (
            f"{head}: {self.legs} legs, {self.sent} exits sent, {self.filled} filled, {self.rejected} rejected"
            f", {self.cancelled} orders cancelled"
        )
        if self.still_open:
            text += f"; still open: {', '.join(self.still_open)}"
        if self.flat and self.kind == "KILL_ALL":
            text += "; broker kill switch " + ("on" if self.kill_switch else "NOT on")
        return text


def _tally(result: FlattenResult, legs: dict[str, Leg], order_ids: set[int], open_now: dict[str, int]) -> None:
    """Fill the result in from the orders' and positions' actual states."""
    orders = _orders(order_ids)
    for order in orders:
        leg = legs.setdefault(order.instrument.security_id, Leg(order.instrument.security_id, order.instrument.display))
        leg.sent += order.state != Order.State.NEW
        leg.filled += order.state == Order.State.FILLED
        if order.state == Order.State.REJECTED:
            leg.rejected += 1
            why = f"rejected: {order.reject_code} {order.reason}".strip()
            if why not in leg.why:
                leg.why.append(why)
    for sid, leg in legs.items():
        leg.open = open_now.get(sid, 0)
    result.legs = len(legs)
    result.sent = sum(leg.sent for leg in legs.values())
    result.filled = sum(leg.filled for leg in legs.values())
    result.rejected = sum(leg.rejected for leg in legs.values())
    result.still_open = [f"{leg.symbol} {leg.open:+d}" for leg in legs.values() if leg.open]
    result.detail = [dataclasses.asdict(leg) for leg in legs.values()]


# --- Kill All -------------------------------------------------------------------------------


async def _cancel_everything(path, kept: set[int], result: FlattenResult) -> int:
    """Cancel every open order on the account but Kill All's own exits: ours through the
    order manager, the broker's others (placed elsewhere) directly, in the priority lane.
    Returns how many were cancelled."""
    oms, broker = path.oms, path.broker
    ours = await _db(
        lambda: list(
            Order.objects.filter(account=path.account, state__in=[Order.State.NEW, *WORKING])
            .exclude(pk__in=list(kept))
            .exclude(purpose=Order.Purpose.KILL)
            .select_related("instrument", "strategy", "signal")
        )
    )()
    cancelled = 0
    for order in ours:
        try:
            done = await oms.cancel(order, reason=f"{result.kind}: {result.reason}"[:200])
            cancelled += done.state == Order.State.CANCELLED
        except Exception as exc:  # the next round looks again
            result.errors.append(f"cancel {order.client_order_id}: {exc!r}"[:200])
    try:
        book = await broker.order_book()
    except Exception as exc:
        result.errors.append(f"order book: {exc!r}"[:200])
        return cancelled
    mine = await _db(
        lambda: set(
            Order.objects.filter(Q(pk__in=list(kept)) | Q(account=path.account, purpose=Order.Purpose.KILL))
            .filter(state__in=Order.LIVE_STATES)
            .values_list("client_order_id", flat=True)
        )
    )()
    known = {o.client_order_id for o in ours}
    for remote in book:
        if remote.status not in OPEN_AT_BROKER or remote.correlation_id in mine or remote.correlation_id in known:
            continue
        try:
            await path.limiter.acquire(priority=True)
            await asyncio.wait_for(broker.cancel_order(remote.broker_order_id), timeout=oms.call_timeout_s)
            cancelled += 1
        except Exception as exc:
            result.errors.append(f"cancel {remote.broker_order_id}: {exc!r}"[:200])
    return cancelled


def _instruments(security_ids) -> dict[str, Instrument]:
    return {
        i.security_id: i
        for i in Instrument.objects.filter(security_id__in=list(security_ids)).select_related("underlying")
    }


def _ours(account: str) -> dict[str, list[Position]]:
    held: dict[str, list[Position]] = {}
    for p in (
        Position.objects.filter(account=account)
        .exclude(net_quantity=0)
        .select_related("instrument", "instrument__underlying", "strategy", "signal")
    ):
        held.setdefault(p.instrument.security_id, []).append(p)
    return held


async def kill_all(
    path,
    *,
    actor: str,
    reason: str,
    deadline_s: float = 15.0,
    activate_kill_switch: bool = True,
    halt: bool = True,
    purpose: str = Order.Purpose.KILL,
    kind: str = "KILL_ALL",
    progress=None,
) -> FlattenResult:
    """Get the account flat, or say exactly why not. See the module docstring."""
    account, oms, broker, clock = path.account, path.oms, path.broker, path.clock
    began = time.monotonic()
    result = FlattenResult(kind=kind, actor=actor, reason=reason)
    alerts = Alerts(account, clock, "kill_all" if kind == "KILL_ALL" else "risk")
    legs: dict[str, Leg] = {}
    order_ids: set[int] = set()
    instruments: dict[str, Instrument] = {}

    async def report(stage: str) -> None:
        data = {"stage": stage, **result.as_dict()}
        if progress is not None:
            progress(data)
        await asend_now("kill_all", data, account=account)  # never raises: a dead Redis only loses the event

    if halt:
        await _db(set_trading_state)(
            TradingState.State.HALTED, actor=actor, reason=f"Kill All: {reason}", account=account, at=clock.now()
        )
    await _db(audit_append)(
        f"{kind.lower()}.started", actor=actor, subject=f"account:{account}", payload={"reason": reason}, at=clock.now()
    )
    # The broker's kill switch before: already on, it would refuse the exits (an alert says so).
    switch_before = await kill_switch_check(broker, expect=False, stage="before Kill All", account=account)
    result.cancelled += await _cancel_everything(path, order_ids, result)
    await report("cancelled")

    positions = None
    polled = -1e9
    open_orders = True
    inflight: dict[str, asyncio.Task] = {}

    ours: dict[str, list[Position]] = {}
    read_at = timezone.now()

    def harvest() -> set[str]:
        """Collect the legs' finished sends; returns the legs a send of which the broker
        never listed (given up after the exit window: they still need their quantity)."""
        lost = set()
        for sid, task in list(inflight.items()):
            if not task.done():
                continue
            del inflight[sid]
            if task.exception() is not None:
                result.errors.append(f"exit {sid}: {task.exception()!r}"[:200])
            else:
                order_ids.update(o.pk for o in task.result())
                if any(o.reject_code == NOT_AT_BROKER for o in task.result()):
                    lost.add(sid)
        return lost

    def launch(sid: str, net: int) -> None:
        # Every leg on its own task: the limiter's priority lane orders them, and a leg
        # whose outcome is being looked up holds up neither the others nor the polling.
        inflight[sid] = asyncio.ensure_future(
            _exit_broker_net(oms, instruments[sid], net, ours.get(sid, []), read_at, purpose, reason)
        )

    while True:
        lost = harvest()
        now = time.monotonic()
        late = now - began >= deadline_s
        if lost and positions and not late and now - polled < POSITIONS_EVERY_S:
            # A leg whose send was lost goes again at once on the last report (it has waited
            # out the exit window already): what it still needs counts the exits filled since
            # that report, so the next report would only add up to half a second. A leg the
            # broker rejected waits for the next report, so a reject that persists costs at
            # most two sends a second.
            for sid in lost:
                if positions.get(sid) and sid in instruments and sid not in inflight:
                    launch(sid, positions[sid])
        if now - polled >= POSITIONS_EVERY_S or late:
            polled = now
            asked_at = timezone.now()
            try:
                positions = {p.security_id: p.net_quantity for p in await broker.positions() if p.net_quantity}
            except Exception as exc:  # a missing report is not "flat": keep the last one and go on
                result.errors.append(f"positions: {exc!r}"[:200])
                await alerts.once("positions", "WARNING", "Broker positions unavailable during a flatten", repr(exc))
            else:
                read_at = asked_at  # the time of the report the legs are sent on, never of a failed read
                try:
                    open_orders = any(o.status in OPEN_AT_BROKER for o in await broker.order_book())
                except Exception as exc:
                    result.errors.append(f"order book: {exc!r}"[:200])
                    open_orders = True
                missing = set(positions) - set(instruments)
                if missing:
                    instruments.update(await _db(_instruments)(missing))
                ours = await _db(_ours)(account)
                for sid, net in positions.items():
                    instrument = instruments.get(sid)
                    if sid not in legs:
                        legs[sid] = Leg(sid, instrument.display if instrument else sid, quantity=net)
                    if instrument is None:
                        if "unknown instrument" not in legs[sid].why:
                            legs[sid].why.append("unknown instrument: not in the instrument master")
                        continue
                    if sid in inflight:
                        continue  # that leg's last send (perhaps an unknown outcome being looked up) is not done
                    launch(sid, net)
                if positions == {} and not open_orders and not inflight and not await _db(_any_live)(set(order_ids)):
                    result.flat = True
                    result.flat_s = round(time.monotonic() - began, 4)
                    if result.sent_s is None:
                        result.sent_s = result.flat_s if order_ids else 0.0
                    break
                if open_orders:
                    result.cancelled += await _cancel_everything(path, order_ids, result)
        if result.sent_s is None and order_ids and not inflight:
            result.sent_s = round(time.monotonic() - began, 4)
        if late:
            break
        await _round(oms, broker, order_ids, alerts, result)
        await report("working")
        await asyncio.sleep(ROUND_S)

    if inflight:  # sends still in flight at the deadline finish (each is bounded by its timeouts)
        await asyncio.gather(*inflight.values(), return_exceptions=True)
        harvest()
    if result.flat and activate_kill_switch:
        try:
            result.kill_switch = bool(await broker.kill_switch(True))
        except Exception as exc:
            result.errors.append(f"kill switch: {exc!r}"[:200])
            await alerts.once(
                "kill_switch", "CRITICAL", "Flat, but the broker's kill switch could not be activated", repr(exc)
            )
    switch_after = await kill_switch_check(
        broker, expect=True if result.kill_switch else None, stage="after Kill All", account=account
    )
    if switch_before is not None and switch_after is None:
        result.errors.append("kill switch: status unknown after Kill All")
    result.elapsed_s = round(time.monotonic() - began, 4)
    if positions is None:  # no report at all: the legs are ours, and nothing is known to be closed
        ours = await _db(_ours)(account)
        positions = {sid: sum(p.net_quantity for p in rows) for sid, rows in ours.items()}
        for sid, rows in ours.items():
            legs.setdefault(sid, Leg(sid, rows[0].instrument.display, quantity=positions[sid]))
            legs[sid].why.append("no position report from the broker")
    await _db(_tally)(result, legs, order_ids, positions)
    await _finish(result, account, clock, alerts, subject=f"account:{account}")
    await report("done")
    metrics.kill_all_finished(result.elapsed_s, result.flat)
    return result


async def _exit_broker_net(oms, instrument, net: int, ours: list[Position], read_at, purpose: str, reason: str):
    """Send what the broker's ``net`` still needs beyond the exits already working,
    attributed to our position on the instrument when there is exactly one."""
    side = exit_side(net)
    broker_net = BrokerNet(abs(net), read_at)
    need = await _db(left_to_exit)(oms.account, instrument.pk, side, broker_net)
    if need <= 0:
        return []
    same = [p for p in ours if (p.net_quantity > 0) == (net > 0)]
    owner = same[0] if len(same) == 1 else None
    return await send_exit(
        oms,
        instrument,
        side,
        need,
        purpose=purpose,
        reason=reason,
        strategy=owner.strategy if owner else None,
        signal=owner.signal if owner else None,
        broker_net=broker_net,
    )


LABELS = {"KILL_ALL": "Kill All", "EXIT": "Exit", "DAILY_LOSS": "Daily-loss flatten"}


async def _finish(result: FlattenResult, account: str, clock, alerts: Alerts, *, subject: str) -> None:
    """One audit record with the result, and the alerts the result calls for."""
    label = LABELS.get(result.kind, result.kind)
    for leg in result.detail:
        if leg["rejected"]:
            await alerts.once(
                f"rejected:{leg['security_id']}",
                "WARNING",
                f"{label} leg {leg['symbol']} rejected",
                "; ".join(leg["why"]),
            )
    if not result.flat:
        await alerts.once(
            "not_flat",
            "CRITICAL",
            f"{label} NOT flat after {result.elapsed_s:.1f} s",
            "Still open: "
            + (", ".join(result.still_open) or "unknown (no position report)")
            + ". "
            + "; ".join(w for leg in result.detail for w in leg["why"])[:1500],
        )
    await _db(audit_append)(
        f"{result.kind.lower()}.finished", actor=result.actor, subject=subject, payload=result.as_dict(), at=clock.now()
    )
    log.warning("flatten finished", extra={"result": result.as_dict()})


# --- one position's exit ------------------------------------------------------------------------


def _targets(account: str, position_id: int) -> list[Position]:
    """The position and the hedge opened for the same signal (both still open)."""
    position = (
        Position.objects.filter(pk=position_id, account=account)
        .select_related("instrument", "instrument__underlying", "strategy", "signal")
        .first()
    )
    if position is None or not position.is_open:
        return []
    rows = [position]
    if position.signal_id:
        rows += list(
            Position.objects.filter(account=account, signal_id=position.signal_id)
            .exclude(pk=position.pk)
            .exclude(net_quantity=0)
            .select_related("instrument", "instrument__underlying", "strategy", "signal")
        )
    return rows


async def exit_position(path, position_id: int, *, actor: str, deadline_s: float = 10.0) -> FlattenResult:
    """Flatten one position and its signal's hedge: cancel the strategy's other live
    orders on those instruments, send the exits (purpose EXIT, priority lane) and
    work them until flat or the deadline. No trading state refuses it: an exit only
    reduces exposure."""
    account, oms, broker, clock = path.account, path.oms, path.broker, path.clock
    began = time.monotonic()
    reason = f"manual exit by {actor}"
    result = FlattenResult(kind="EXIT", actor=actor, reason=reason)
    alerts = Alerts(account, clock, "oms")
    targets = await _db(_targets)(account, position_id)
    if not targets:
        result.flat = True
        result.errors.append("no open position")
        return result
    legs = {
        p.instrument.security_id: Leg(p.instrument.security_id, p.instrument.display, quantity=p.net_quantity)
        for p in targets
    }
    await _db(audit_append)(
        "position.exit_requested",
        actor=actor,
        subject=f"position:{position_id}",
        payload={"legs": {p.instrument.security_id: p.net_quantity for p in targets}},
        at=clock.now(),
    )
    others = await _db(
        lambda: list(
            Order.objects.filter(
                account=account,
                state__in=[Order.State.NEW, *WORKING],
                instrument_id__in=[p.instrument_id for p in targets],
            )
            .exclude(purpose__in=EXIT_PURPOSES)
            .select_related("instrument", "strategy", "signal")
        )
    )()
    for order in others:  # a scale-up still working would re-open what the exit closes
        try:
            done = await oms.cancel(order, reason=reason)
            result.cancelled += done.state == Order.State.CANCELLED
        except Exception as exc:  # the exit goes on; the claim still caps what it sells
            result.errors.append(f"cancel {order.client_order_id}: {exc!r}"[:200])
    order_ids: set[int] = set()
    ids = [p.pk for p in targets]
    left: dict[str, int] = {}
    while True:
        fresh = await _db(
            lambda: list(
                Position.objects.filter(pk__in=ids).select_related(
                    "instrument", "instrument__underlying", "strategy", "signal"
                )
            )
        )()
        left = {p.instrument.security_id: p.net_quantity for p in fresh if p.net_quantity}
        if not left and not await _db(_any_live)(set(order_ids)):
            result.flat = True
            result.flat_s = round(time.monotonic() - began, 4)
            break
        if time.monotonic() - began >= deadline_s:
            break
        for p in fresh:
            if not p.net_quantity:
                continue
            side = exit_side(p.net_quantity)
            need = abs(p.net_quantity) - await _db(working_exit_quantity)(account, p.instrument_id, side)
            if need > 0:
                try:
                    sent = await send_exit(
                        oms,
                        p.instrument,
                        side,
                        need,
                        purpose=Order.Purpose.EXIT,
                        reason=reason,
                        strategy=p.strategy,
                        signal=p.signal,
                    )
                except Exception as exc:  # the next round sends again
                    result.errors.append(f"exit {p.instrument.trading_symbol}: {exc!r}"[:200])
                    continue
                order_ids.update(o.pk for o in sent)
        if result.sent_s is None and order_ids:
            result.sent_s = round(time.monotonic() - began, 4)
        await _round(oms, broker, order_ids, alerts, result)
        await asyncio.sleep(ROUND_S)
    result.elapsed_s = round(time.monotonic() - began, 4)
    await _db(_tally)(result, legs, order_ids, left)
    await _finish(result, account, clock, alerts, subject=f"position:{position_id}")
    return result


# --- the daily-loss breaker ------------------------------------------------------------------------


async def daily_loss_flatten(
    path, *, net_pnl: Decimal, cap: Decimal, deadline_s: float = 60.0, verdict: str = ""
) -> FlattenResult | None:
    """Past the daily net loss cap: the breaker trips (REDUCING, audited, alerted),
    everything is flattened by Kill All's flatten (without the broker's kill switch:
    the next session trades again), and the account is HALTED until the next
    session — which still lets every exit through."""
    if net_pnl > -cap:
        return None
    account, clock = path.account, path.clock
    now = clock.now()
    reason = f"daily net loss ₹{-net_pnl} reached the cap of ₹{cap}"
    details = {"net_pnl": str(net_pnl), **({"verdict": verdict} if verdict else {})}
    await _db(trip_breaker)("daily_loss", reason, at=now, account=account, details=details)
    result = await kill_all(
        path,
        actor="breaker:daily_loss",
        reason=reason,
        deadline_s=deadline_s,
        activate_kill_switch=False,
        halt=False,
        kind="DAILY_LOSS",
    )
    await _db(set_trading_state)(
        TradingState.State.HALTED,
        actor="breaker:daily_loss",
        reason=reason,
        account=account,
        halted_until=next_session_open(now),
        at=clock.now(),
    )
    return result
