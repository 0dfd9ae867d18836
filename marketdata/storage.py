"""Batched writes of feed data, and reading it back as snapshots.

Writes are never a save per row: COPY on PostgreSQL, ``bulk_create`` batches
on SQLite. On PostgreSQL the raw tables are partitioned by IST day; the
writer creates the day's partition before the first write into it.
Prices are stored as integer paise, so what is read back equals what was
written (prices on the ₹0.05 tick are exact at two decimals).
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
from django.db import connection, transaction
from psycopg import errors as psycopg_errors

from marketdata.feeds.base import ChainSnapshot, LtpTick
from marketdata.models import ChainQuote, DerivedMetric, LtpQuote, MinuteBar
from quanthub.clock import IST

CHAIN_COLUMNS = [
    "ts",
    "seq",
    "underlying",
    "expiry",
    "security_id",
    "strike_paise",
    "option_type",
    "last_paise",
    "bid_paise",
    "ask_paise",
    "bid_qty",
    "ask_qty",
    "volume",
    "oi",
    "prev_oi",
    "iv",
    "delta",
    "gamma",
    "theta",
    "vega",
    "flags",
    "underlying_paise",
    "received_at",
]
LTP_COLUMNS = ["ts", "seq", "security_id", "exchange_segment", "symbol", "kind", "ltp_paise", "received_at"]
BAR_COLUMNS = [
    "minute",
    "security_id",
    "symbol",
    "open_paise",
    "high_paise",
    "low_paise",
    "close_paise",
    "volume",
    "oi",
    "source",
    "iv",
    "spot_paise",
]
BAR_UPDATED = ["high_paise", "low_paise", "close_paise", "volume", "oi"]
RAW_TABLES = {"chain": ChainQuote._meta.db_table, "ltp": LtpQuote._meta.db_table}


def to_paise(values: np.ndarray) -> np.ndarray:
    """Rupees to integer paise; NaN or ±inf (a masked bad quote) is stored as -1.
    (Rounding and multiplying NaN or inf warn of nothing; the cast sees finite values only.)"""
    paise = np.round(np.asarray(values, dtype=np.float64) * 100.0)
    return np.where(np.isfinite(paise), paise, -1).astype(np.int64)


def scalar_paise(rupees: float) -> int:
    """``to_paise`` of one value, without an array (round half to even, like np.round)."""
    rupees = float(rupees)
    return int(round(rupees * 100.0)) if math.isfinite(rupees) else -1


def from_paise(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.where(values == -1, np.nan, values / 100.0)


def partition_name(table: str, day: dt.date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def ensure_partitions(table: str, days: Iterable[dt.date]) -> None:
    """Create the day partitions of a raw table on PostgreSQL (no-op elsewhere).

    Once per flush, not per row; IF NOT EXISTS keeps it correct when another
    process (retention, a second writer) changed the partitions meanwhile.
    """
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for day in sorted(set(days)):
            name = partition_name(table, day)
            start = dt.datetime.combine(day, dt.time(0), tzinfo=IST)
            end = start + dt.timedelta(days=1)
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} FOR VALUES FROM (%s) TO (%s)", [start, end]
            )


@dataclass(slots=True)
class _Bar:
    minute: dt.datetime
    symbol: str
    open: int
    high: int
    low: int
    close: int
    first_volume: int
    last_volume: int
    oi: int


@dataclass
class SnapshotWriter:
    """Buffers rows and writes them in batches; builds minute bars as it goes.

    Sync: the engine calls ``add_*`` on its loop (cheap, in memory) and
    ``flush`` through ``sync_to_async``.
    """

    batch_rows: int = 20_000
    _chain_rows: list[tuple] = field(default_factory=list)
    _ltp_rows: list[tuple] = field(default_factory=list)
    _bars: dict[str, _Bar] = field(default_factory=dict)
    _done_bars: list[tuple] = field(default_factory=list)
    rows_written: int = 0

    def add_chain(self, snapshot: ChainSnapshot) -> None:
        ts, received = snapshot.exchange_time, snapshot.received_at
        n = len(snapshot.security_id)
        # The strikes, prices and mids to paise in one array operation.
        prices = np.empty((5, n))
        prices[0], prices[1], prices[2], prices[3] = snapshot.strike, snapshot.last_price, snapshot.bid, snapshot.ask
        np.divide(snapshot.bid + snapshot.ask, 2.0, out=prices[4])
        strike, last, bid, ask, mid = to_paise(prices).tolist()
        under = scalar_paise(snapshot.underlying_ltp)
        sids, volume, oi = snapshot.security_id.tolist(), snapshot.volume.tolist(), snapshot.oi.tolist()
        # One row per contract in CHAIN_COLUMNS' order, built by zip: a Python loop
        # assembling the tuples cost more than the rest of the snapshot's storage.
        self._chain_rows.extend(
            zip(
                repeat(ts, n),
                repeat(snapshot.seq, n),
                repeat(snapshot.underlying, n),
                repeat(snapshot.expiry, n),
                sids,
                strike,
                snapshot.option_type.tolist(),
                last,
                bid,
                ask,
                snapshot.bid_qty.tolist(),
                snapshot.ask_qty.tolist(),
                volume,
                oi,
                snapshot.prev_oi.tolist(),
                snapshot.iv.tolist(),
                snapshot.delta.tolist(),
                snapshot.gamma.tolist(),
                snapshot.theta.tolist(),
                snapshot.vega.tolist(),
                snapshot.flags.tolist(),
                repeat(under, n),
                repeat(received, n),
                strict=True,
            )
        )
        # The good rows' minute bars (``_bar``, inlined: a call per contract cost more than the bar).
        minute = ts.replace(second=0, microsecond=0)
        bars, done = self._bars, self._done_bars
        for good, sid, m, vol, o in zip((snapshot.flags == 0).tolist(), sids, mid, volume, oi, strict=True):
            if not good:
                continue
            bar = bars.get(sid)
            if bar is not None and bar.minute == minute:
                if m > bar.high:
                    bar.high = m
                if m < bar.low:
                    bar.low = m
                bar.close, bar.last_volume, bar.oi = m, vol, o
                continue
            if bar is not None:
                done.append(self._close_bar(sid, bar))
            bars[sid] = _Bar(minute, "", m, m, m, m, vol, vol, o)

    def add_tick(self, tick: LtpTick) -> None:
        ltp = float(tick.ltp)
        # The scalar twin of to_paise (round half to even, like np.round): a numpy
        # array per tick cost more than the rest of the tick path.
        paise = scalar_paise(ltp)
        self._ltp_rows.append(
            (
                tick.exchange_time,
                tick.seq,
                tick.security_id,
                tick.exchange_segment,
                tick.symbol,
                tick.kind,
                paise,
                tick.received_at,
            )
        )
        if paise > 0:
            self._bar(tick.security_id, tick.symbol, tick.exchange_time, paise, 0, 0)

    def add(self, item: ChainSnapshot | LtpTick) -> None:
        if isinstance(item, ChainSnapshot):
            self.add_chain(item)
        elif isinstance(item, LtpTick):
            self.add_tick(item)
        # One-second candidate quotes (QuoteSnapshot) are not stored: they drive live
        # decisions only, and a replay measures the jump between stored chains.

    @property
    def pending(self) -> int:
        return len(self._chain_rows) + len(self._ltp_rows)

    def _bar(
        self,
        sid: str,
        symbol: str,
        ts: dt.datetime,
        price: int,
        volume: int,
        oi: int,
        minute: dt.datetime | None = None,
    ) -> None:
        if minute is None:
            minute = ts.replace(second=0, microsecond=0)
        bar = self._bars.get(sid)
        if bar is not None and bar.minute != minute:
            self._done_bars.append(self._close_bar(sid, bar))
            bar = None
        if bar is None:
            self._bars[sid] = _Bar(minute, symbol, price, price, price, price, volume, volume, oi)
            return
        bar.high = max(bar.high, price)
        bar.low = min(bar.low, price)
        bar.close = price
        bar.last_volume = volume
        bar.oi = oi

    @staticmethod
    def _close_bar(sid: str, bar: _Bar) -> tuple:
        """A finished bar as a row of ``BAR_COLUMNS`` (recorded from our own feed: no source, IV or spot)."""
        volume = max(bar.last_volume - bar.first_volume, 0)
        return (bar.minute, sid, bar.symbol, bar.open, bar.high, bar.low, bar.close, volume, bar.oi, "", None, None)

    def flush(self, *, close_bars: bool = False) -> int:
        """Write everything buffered in one transaction; returns raw rows written."""
        chain, ltp = self._chain_rows, self._ltp_rows
        self._chain_rows, self._ltp_rows = [], []
        if close_bars:
            self._done_bars.extend(self._close_bar(sid, bar) for sid, bar in self._bars.items())
            self._bars.clear()
        bars, self._done_bars = self._done_bars, []
        with transaction.atomic():
            if chain:
                ensure_partitions(
                    RAW_TABLES["chain"], {row[-1].astimezone(IST).date() for row in (chain[0], chain[-1])}
                )
                _write(ChainQuote, CHAIN_COLUMNS, chain, self.batch_rows)
            if ltp:
                ensure_partitions(RAW_TABLES["ltp"], {row[-1].astimezone(IST).date() for row in (ltp[0], ltp[-1])})
                _write(LtpQuote, LTP_COLUMNS, ltp, self.batch_rows)
            if bars:
                _upsert_bars(bars)
        self.rows_written += len(chain) + len(ltp)
        return len(chain) + len(ltp)


def _write(model, columns: list[str], rows: list[tuple], batch: int) -> None:
    """Append raw rows. A row already stored under the same (received_at,
    security_id) is kept and the new one dropped: a feed that repeats itself, or
    the simulator replaying a day it already wrote, must not stop the engine."""
    if connection.vendor == "postgresql":
        table = model._meta.db_table
        names = ", ".join(columns)
        try:
            with (
                transaction.atomic(),  # a savepoint: the fast path may fail
                connection.cursor() as cursor,
                cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            return
        except psycopg_errors.UniqueViolation:
            pass
        with connection.cursor() as cursor:
            staging = f"{table}_staging"
            cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table}) ON COMMIT DELETE ROWS")
            with cursor.cursor.copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            # Table and column names come from our models, never from input.
            insert = (
                f"INSERT INTO {table} ({names}) SELECT DISTINCT ON (received_at, security_id) {names} "  # noqa: S608
                f"FROM {staging}"
            )
            cursor.execute(insert + " ON CONFLICT DO NOTHING")
            cursor.execute(f"DELETE FROM {staging}")  # noqa: S608
        return
    # SQLite: one executemany of plain tuples (OR IGNORE: the first row stored wins). Building a model instance per row
    # and letting bulk_create compile a statement per 900 rows cost more than the
    # insert itself; the values are adapted exactly as the ORM would adapt them.
    table = connection.ops.quote_name(model._meta.db_table)
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    sql = f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608 (identifiers from the model)
    adapters = [_adapter(model._meta.get_field(c)) for c in columns]
    adapt = [(i, a) for i, a in enumerate(adapters) if a is not None]
    with connection.cursor() as cursor:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            if adapt:
                memo: dict = {}  # a snapshot's rows share their times: adapt each once
                chunk = [_adapted(row, adapt, memo) for row in chunk]
            cursor.executemany(sql, chunk)


def _upsert_bars(rows: list[tuple]) -> None:
    """Store finished minute bars; a bar already stored for the minute (a flush after a
    restart, a bar closed twice) takes the new high, low, close, volume and OI and keeps
    its open. One executemany of plain tuples: a model instance per bar cost more than the
    write. The same statement on SQLite and PostgreSQL."""
    q = connection.ops.quote_name
    table = q(MinuteBar._meta.db_table)
    names = ", ".join(q(c) for c in BAR_COLUMNS)
    updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in BAR_UPDATED)
    sql = (
        f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(BAR_COLUMNS))}) "  # noqa: S608 (identifiers from the model)
        f"ON CONFLICT ({q('security_id')}, {q('minute')}) DO UPDATE SET {updates}"
    )
    adapt = connection.ops.adapt_datetimefield_value
    minutes: dict = {}  # a flush's bars share a few minutes: adapt each once
    for row in rows:
        if row[0] not in minutes:
            minutes[row[0]] = adapt(row[0])
    with connection.cursor() as cursor:
        cursor.executemany(sql, [(minutes[row[0]], *row[1:]) for row in rows])


def _adapter(field):
    """The ORM's own value adaptation for date and time columns (None: pass as is)."""
    kind = field.get_internal_type()
    if kind == "DateTimeField":
        return connection.ops.adapt_datetimefield_value
    if kind == "DateField":
        return connection.ops.adapt_datefield_value
    return None


def _adapted(row: tuple, adapt: list, memo: dict) -> tuple:
    values = list(row)
    for i, fn in adapt:
        value = values[i]
        done = memo.get(value)
        if done is None:
            done = memo[value] = fn(value)
        values[i] = done
    return tuple(values)


def record_metric(name: str, value: float, *, key: str = "", ts: dt.datetime) -> None:
    DerivedMetric.objects.create(ts=ts, name=name, key=key, value=value)


def load_chain_history(
    underlying: str, since: dt.datetime, until: dt.datetime | None = None
) -> Iterator[ChainSnapshot]:
    """Stored chains of one underlying, rebuilt as snapshots in time order."""
    rows = ChainQuote.objects.filter(underlying=underlying, received_at__gte=since)
    if until is not None:
        rows = rows.filter(received_at__lt=until)
    yield from _snapshots(
        rows.order_by("received_at", "seq", "strike_paise", "option_type").values_list(*CHAIN_COLUMNS)
    )


def _snapshots(rows) -> Iterator[ChainSnapshot]:
    batch: list[tuple] = []
    for row in rows.iterator(chunk_size=5000):
        if batch and (row[1] != batch[0][1] or row[2] != batch[0][2]):  # a new snapshot: seq or underlying
            yield _to_snapshot(batch)
            batch = []
        batch.append(row)
    if batch:
        yield _to_snapshot(batch)


def _to_snapshot(batch: list[tuple]) -> ChainSnapshot:
    cols = list(zip(*batch, strict=True))
    c = dict(zip(CHAIN_COLUMNS, cols, strict=True))
    ints = {name: np.array(c[name], dtype=np.int64) for name in ("volume", "oi", "prev_oi", "bid_qty", "ask_qty")}
    floats = {name: np.array(c[name], dtype=np.float64) for name in ("iv", "delta", "gamma", "theta", "vega")}
    return ChainSnapshot(
        underlying=batch[0][2],
        expiry=batch[0][3],
        exchange_time=batch[0][0].astimezone(IST),
        received_at=batch[0][22].astimezone(IST),
        underlying_ltp=batch[0][21] / 100.0,
        security_id=np.array(c["security_id"], dtype="U20"),
        strike=from_paise(np.array(c["strike_paise"])),
        option_type=np.array(c["option_type"], dtype=np.int8),
        last_price=from_paise(np.array(c["last_paise"])),
        bid=from_paise(np.array(c["bid_paise"])),
        ask=from_paise(np.array(c["ask_paise"])),
        flags=np.array(c["flags"], dtype=np.uint16),
        seq=int(batch[0][1]),
        **ints,
        **floats,
    )


def load_ticks(since: dt.datetime, until: dt.datetime) -> Iterator[LtpTick]:
    rows = (
        LtpQuote.objects.filter(received_at__gte=since, received_at__lt=until)
        .order_by("received_at", "seq")
        .values_list(*LTP_COLUMNS)
    )
    for ts, seq, sid, segment, symbol, kind, paise, received in rows.iterator(chunk_size=5000):
        yield LtpTick(sid, segment, symbol, kind, paise / 100.0, ts.astimezone(IST), received.astimezone(IST), seq)


def load_session(day: dt.date) -> Iterator[ChainSnapshot | LtpTick]:
    """Every stored item of an IST trading day, in the order the feed produced them."""
    start = dt.datetime.combine(day, dt.time(0), tzinfo=IST)
    end = start + dt.timedelta(days=1)
    chains = _snapshots(
        ChainQuote.objects.filter(received_at__gte=start, received_at__lt=end)
        .order_by("received_at", "seq", "strike_paise", "option_type")
        .values_list(*CHAIN_COLUMNS)
    )
    yield from heapq.merge(chains, load_ticks(start, end), key=lambda item: (item.received_at, item.seq))
