"""The synthetic market's instruments, for the embedded default and tests.

NSE facts for the synthetic market (data here, because this *is* the data
source for the simulator; trading logic reads them from the database):
NIFTY lot 65, strike step 50, freeze 1,800, weekly Tuesday expiries plus the
monthly; BANKNIFTY lot 30, step 100, freeze 600, monthly expiries only.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db import transaction

from marketdata.models import Instrument, Underlying
from quanthub.clock import IST, RealClock

SYNTHETIC_UNDERLYINGS = {
    "NIFTY": {"lot": 65, "step": 50, "freeze": 1800, "spot": 24500.0, "index_id": "13", "rule": "WEEKLY_AND_MONTHLY"},
    "BANKNIFTY": {"lot": 30, "step": 100, "freeze": 600, "spot": 52000.0, "index_id": "25", "rule": "MONTHLY"},
}


def _tuesdays(start: dt.date, weeks: int) -> list[dt.date]:
    first = start + dt.timedelta(days=(1 - start.weekday()) % 7)
    return [first + dt.timedelta(weeks=i) for i in range(weeks)]


def _last_tuesday(year: int, month: int) -> dt.date:
    nxt = dt.date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - 1) % 7)


@transaction.atomic
def ensure_demo_instruments(today: dt.date | None = None, strikes_each_side: int = 20) -> int:
    today = today or RealClock().now().astimezone(IST).date()
    count = 0
    for symbol, spec in SYNTHETIC_UNDERLYINGS.items():
        und, _ = Underlying.objects.update_or_create(
            symbol=symbol,
            defaults={
                "name": symbol,
                "strike_step": Decimal(spec["step"]),
                "expiry_rule": spec["rule"],
                "security_id": spec["index_id"],
            },
        )
        Instrument.objects.update_or_create(
            exchange_segment="IDX_I",
            security_id=spec["index_id"],
            defaults={
                "underlying": und,
                "kind": "INDEX",
                "lot_size": 1,
                "freeze_quantity": 1,
                "trading_symbol": symbol,
            },
        )
        monthly = _last_tuesday(today.year, today.month)
        if monthly < today:
            monthly = _last_tuesday(today.year + (today.month == 12), today.month % 12 + 1)
        expiry = _tuesdays(today, 1)[0] if spec["rule"] == "WEEKLY_AND_MONTHLY" else monthly
        fut_id = f"9{spec['index_id']}{monthly:%y%m}"
        Instrument.objects.update_or_create(
            exchange_segment="NSE_FNO",
            security_id=fut_id,
            defaults={
                "underlying": und,
                "kind": "FUT",
                "expiry": monthly,
                "lot_size": spec["lot"],
                "freeze_quantity": spec["freeze"],
                "trading_symbol": f"{symbol}-{monthly:%b%Y}-FUT",
            },
        )
        atm = round(spec["spot"] / spec["step"]) * spec["step"]
        for k in range(-strikes_each_side, strikes_each_side + 1):
            strike = atm + k * spec["step"]
            for kind in ("CE", "PE"):
                sid = f"{spec['index_id']}{expiry:%y%m%d}{int(strike):06d}{0 if kind == 'CE' else 1}"
                Instrument.objects.update_or_create(
                    exchange_segment="NSE_FNO",
                    security_id=sid,
                    defaults={
                        "underlying": und,
                        "kind": kind,
                        "strike": Decimal(strike),
                        "expiry": expiry,
                        "lot_size": spec["lot"],
                        "freeze_quantity": spec["freeze"],
                        "trading_symbol": f"{symbol}-{expiry:%d%b%Y}-{int(strike)}-{kind}",
                    },
                )
                count += 1
        count += 2
    return count
