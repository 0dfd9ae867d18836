"""Load an instrument master in Dhan's scrip-master CSV format.

Everything is validated before anything is written: a malformed file is
refused with the row number and the column, and nothing is loaded. Rows for
other exchanges, segments or underlyings are skipped. Lot sizes, tick sizes,
expiries and strikes come from the file; strike steps are derived from the
strikes; freeze quantities (which Dhan's file does not carry) come from our
``QH_FREEZE_QTY`` column when present, else from ``freeze`` arguments, else
from the instruments already loaded.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.db import transaction

from marketdata.models import Instrument, Underlying

REQUIRED = (
    "SEM_EXM_EXCH_ID",
    "SEM_SEGMENT",
    "SEM_SMST_SECURITY_ID",
    "SEM_INSTRUMENT_NAME",
    "SEM_TRADING_SYMBOL",
    "SEM_EXPIRY_DATE",
    "SEM_STRIKE_PRICE",
    "SEM_OPTION_TYPE",
    "SEM_LOT_UNITS",
    "SEM_TICK_SIZE",
)
KINDS = {"INDEX": "INDEX", "FUTIDX": "FUT", "OPTIDX": None}  # OPTIDX: CE/PE from SEM_OPTION_TYPE
SEGMENTS = {("NSE", "I"): "IDX_I", ("NSE", "D"): "NSE_FNO"}
DEFAULT_UNDERLYINGS = ("NIFTY", "BANKNIFTY")


class MasterError(ValueError):
    def __init__(self, problems: list[tuple[int, str, str]]):
        self.problems = problems
        shown = "; ".join(f"row {row}, column {column}: {message}" for row, column, message in problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        super().__init__(f"Instrument master refused, nothing loaded: {shown}{more}")


@dataclass(frozen=True, slots=True)
class ParsedInstrument:
    underlying: str
    kind: str
    security_id: str
    segment: str
    trading_symbol: str
    expiry: dt.date | None
    strike: Decimal | None
    lot_size: int
    tick_size: Decimal
    freeze_quantity: int | None
    expiry_flag: str


@dataclass(frozen=True, slots=True)
class LoadResult:
    created: int
    updated: int
    deactivated: int
    skipped: int
    underlyings: tuple[str, ...]


def _underlying_of(row: dict[str, str]) -> str:
    name = (row.get("SM_SYMBOL_NAME") or "").strip().upper()
    if name:
        return name
    return row["SEM_TRADING_SYMBOL"].split("-")[0].strip().upper()


def parse(path: Path, underlyings: Iterable[str] = DEFAULT_UNDERLYINGS) -> tuple[list[ParsedInstrument], int]:
    wanted = {u.upper() for u in underlyings}
    problems: list[tuple[int, str, str]] = []
    parsed: list[ParsedInstrument] = []
    skipped = 0
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise MasterError([(0, "-", f"cannot read {path}: {exc.strerror}")]) from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED if column not in (reader.fieldnames or [])]
        if missing:
            raise MasterError([(1, column, "missing from the header") for column in missing])
        for number, row in enumerate(reader, start=2):
            if None in row or any(value is None for value in row.values()):
                problems.append((number, "-", "wrong number of fields"))
                continue
            instrument = row["SEM_INSTRUMENT_NAME"].strip().upper()
            segment = SEGMENTS.get((row["SEM_EXM_EXCH_ID"].strip().upper(), row["SEM_SEGMENT"].strip().upper()))
            if instrument not in KINDS or segment is None or _underlying_of(row) not in wanted:
                skipped += 1
                continue
            item = _parse_row(number, row, instrument, segment, problems)
            if item is not None:
                parsed.append(item)
    seen: dict[tuple[str, str], int] = {}
    for index, item in enumerate(parsed):
        key = (item.segment, item.security_id)
        if key in seen:
            problems.append((0, "SEM_SMST_SECURITY_ID", f"security id {item.security_id} appears twice"))
        seen[key] = index
    if problems:
        raise MasterError(problems)
    return parsed, skipped


def _parse_row(number, row, instrument, segment, problems) -> ParsedInstrument | None:
    errors_before = len(problems)

    def fail(column: str, message: str) -> None:
        problems.append((number, column, message))

    security_id = row["SEM_SMST_SECURITY_ID"].strip()
    if not security_id.isdigit():
        fail("SEM_SMST_SECURITY_ID", f"expected a numeric security id, got {security_id!r}")
    kind = KINDS[instrument]
    if kind is None:
        kind = row["SEM_OPTION_TYPE"].strip().upper()
        if kind not in ("CE", "PE"):
            fail("SEM_OPTION_TYPE", f"expected CE or PE for an option, got {kind!r}")
    expiry = None
    if kind != "INDEX":
        raw = row["SEM_EXPIRY_DATE"].strip()
        try:
            expiry = dt.datetime.strptime(raw[:10], "%Y-%m-%d").date()  # noqa: DTZ007 (a date, no time zone)
        except ValueError:
            fail("SEM_EXPIRY_DATE", f"expected YYYY-MM-DD[ HH:MM:SS], got {raw!r}")
    strike = None
    if kind in ("CE", "PE"):
        try:
            strike = Decimal(row["SEM_STRIKE_PRICE"].strip())
            if not strike.is_finite() or strike <= 0:
                raise InvalidOperation
        except InvalidOperation:
            fail("SEM_STRIKE_PRICE", f"expected a positive strike, got {row['SEM_STRIKE_PRICE']!r}")
            strike = None
    try:
        lot_size = float(row["SEM_LOT_UNITS"])
        if lot_size <= 0 or lot_size != int(lot_size):
            raise ValueError
        lot_size = int(lot_size)
    except ValueError:
        fail("SEM_LOT_UNITS", f"expected a positive whole lot size, got {row['SEM_LOT_UNITS']!r}")
        lot_size = 0
    try:
        tick_size = tick_rupees(row["SEM_TICK_SIZE"])
    except InvalidOperation:
        fail("SEM_TICK_SIZE", f"expected a positive tick size in paise, got {row['SEM_TICK_SIZE']!r}")
        tick_size = Decimal("0")
    freeze = None
    raw_freeze = (row.get("QH_FREEZE_QTY") or "").strip()
    if raw_freeze:
        if not raw_freeze.isdigit() or int(raw_freeze) <= 0:
            fail("QH_FREEZE_QTY", f"expected a positive whole quantity, got {raw_freeze!r}")
        else:
            freeze = int(raw_freeze)
    if len(problems) > errors_before:
        return None
    return ParsedInstrument(
        underlying=_underlying_of(row),
        kind=kind,
        security_id=security_id,
        segment=segment,
        trading_symbol=row["SEM_TRADING_SYMBOL"].strip(),
        expiry=expiry,
        strike=strike,
        lot_size=lot_size,
        tick_size=tick_size,
        freeze_quantity=freeze,
        expiry_flag=(row.get("SEM_EXPIRY_FLAG") or "").strip().upper(),
    )


def _load_note() -> Path:
    from django.conf import settings

    return Path(settings.VAR_DIR) / "instrument_master.json"


def record_load(path: Path, **counts: int) -> None:
    note = _load_note()
    note.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(tz=dt.UTC).isoformat()
    note.write_text(json.dumps({"loaded_at": stamp, "file": path.name, **counts}), encoding="utf-8")


def last_loaded_at() -> dt.datetime | None:
    """When the instrument master was last loaded on this host (None: never)."""
    try:
        return dt.datetime.fromisoformat(json.loads(_load_note().read_text(encoding="utf-8"))["loaded_at"])
    except (OSError, ValueError, KeyError):
        return None


def tick_rupees(raw: str) -> Decimal:
    """SEM_TICK_SIZE in rupees. Dhan writes derivatives' ticks in paise (``5.0000``)
    and indices' in rupees (``0.0500``). No NSE tick is below one paisa, so a value
    under 1 is already rupees; dividing it by 100 again would load ₹0.05 as ₹0.00."""
    value = Decimal(raw.strip())
    if not value.is_finite() or value <= 0:
        raise InvalidOperation
    rupees = value if value < 1 else value / 100
    return rupees.quantize(Decimal("0.01"))


def display_name(underlying: str, kind: str, expiry: dt.date | None, strike: Decimal | None) -> str:
    """What a trader reads: unique per contract, with the expiry date, so the weekly and
    the monthly of one strike differ (``NIFTY 08 Dec 26 24000 CE``, ``NIFTY 29 Dec 26 FUT``)."""
    if kind == "INDEX" or expiry is None:
        return underlying
    date = f"{expiry:%d %b %y}"
    if kind == "FUT":
        return f"{underlying} {date} FUT"
    return f"{underlying} {date} {strike.normalize():f} {kind}"


def _strike_step(strikes: list[Decimal]) -> Decimal | None:
    ordered = sorted(set(strikes))
    gaps = [b - a for a, b in zip(ordered, ordered[1:], strict=False) if b > a]
    return min(gaps) if gaps else None


def load(
    path: Path, *, underlyings: Iterable[str] = DEFAULT_UNDERLYINGS, freeze: dict[str, int] | None = None
) -> LoadResult:
    parsed, skipped = parse(path, underlyings)
    freeze = {k.upper(): v for k, v in (freeze or {}).items()}
    by_underlying: dict[str, list[ParsedInstrument]] = defaultdict(list)
    for item in parsed:
        by_underlying[item.underlying].append(item)
    problems: list[tuple[int, str, str]] = []
    plans = {}
    for symbol, items in by_underlying.items():
        step = _strike_step([i.strike for i in items if i.strike is not None])
        if step is None:
            problems.append((0, "SEM_STRIKE_PRICE", f"{symbol}: no option strikes to derive the strike step from"))
            continue
        existing_freeze = (
            Instrument.objects.filter(underlying__symbol=symbol, kind__in=["FUT", "CE", "PE"])
            .values_list("freeze_quantity", flat=True)
            .first()
        )
        index_ids = [i.security_id for i in items if i.kind == "INDEX"]
        weekly = any(i.expiry_flag == "W" for i in items)
        plans[symbol] = (step, freeze.get(symbol) or existing_freeze, index_ids[0] if index_ids else "", weekly)
        if plans[symbol][1] is None and any(i.freeze_quantity is None and i.kind != "INDEX" for i in items):
            problems.append(
                (0, "QH_FREEZE_QTY", f"{symbol}: no freeze quantity (pass --freeze {symbol}=QTY; Dhan's file lacks it)")
            )
    if problems:
        raise MasterError(problems)

    created = updated = deactivated = 0
    with transaction.atomic():
        for symbol, items in by_underlying.items():
            step, default_freeze, index_id, weekly = plans[symbol]
            underlying, _ = Underlying.objects.update_or_create(
                symbol=symbol,
                defaults={
                    "name": symbol,
                    "strike_step": step,
                    "expiry_rule": (
                        Underlying.ExpiryRule.WEEKLY_AND_MONTHLY if weekly else Underlying.ExpiryRule.MONTHLY
                    ),
                    **({"security_id": index_id} if index_id else {}),
                },
            )
            existing = {
                (i.exchange_segment, i.security_id): i for i in Instrument.objects.filter(underlying=underlying)
            }
            new_rows, changed = [], []
            for item in items:
                values = {
                    "underlying": underlying,
                    "kind": item.kind,
                    "strike": item.strike,
                    "expiry": item.expiry,
                    "lot_size": item.lot_size,
                    "tick_size": item.tick_size,
                    "freeze_quantity": 1 if item.kind == "INDEX" else (item.freeze_quantity or default_freeze),
                    "trading_symbol": item.trading_symbol,
                    "is_active": True,
                }
                current = existing.pop((item.segment, item.security_id), None)
                if current is None:
                    new_rows.append(Instrument(exchange_segment=item.segment, security_id=item.security_id, **values))
                elif any(getattr(current, field) != value for field, value in values.items()):
                    for field, value in values.items():
                        setattr(current, field, value)
                    changed.append(current)
            Instrument.objects.bulk_create(new_rows, batch_size=1000)
            Instrument.objects.bulk_update(changed, list(values), batch_size=1000)
            stale = [i.pk for i in existing.values() if i.is_active]
            Instrument.objects.filter(pk__in=stale).update(is_active=False)
            created, updated, deactivated = created + len(new_rows), updated + len(changed), deactivated + len(stale)
    # The pre-flight judges the master's age by this note (written once the load has committed).
    record_load(path, created=created, updated=updated, deactivated=deactivated)
    return LoadResult(created, updated, deactivated, skipped, tuple(sorted(by_underlying)))
