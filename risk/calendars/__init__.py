"""The shipped event calendar (2026, 2027) as data; see the seeding migration for sources.

``parse_rows`` reads the same shape from a file for ``manage.py load_event_days``.
"""

from __future__ import annotations

import datetime as dt

RBI = "RBI MPC schedule (rbi.org.in press release)"
BUDGET = "Ministry of Finance: Union Budget on 1 February"
BLS = "BLS CPI release schedule (bls.gov/schedule/news_release/cpi.htm)"
NSE = "NSE circular: trading holidays for 2026"
NSE_2027 = "Fixed-date national holiday; NSE's 2027 circular pending"


def _row(day: str, kind: str, action: str, note: str, source: str, provisional: bool = False) -> dict:
    return {
        "date": dt.date.fromisoformat(day),
        "kind": kind,
        "action": action,
        "note": note,
        "source": source,
        "provisional": provisional,
    }


def _rbi(day: str, provisional: bool = True) -> dict:
    return _row(day, "RBI_POLICY", "NO_NEW_ENTRIES", "RBI MPC policy announcement", RBI, provisional)


def _cpi(day: str, provisional: bool = False) -> dict:
    return _row(day, "US_CPI", "NO_NEW_ENTRIES", "US CPI release 08:30 ET (after NSE's close)", BLS, provisional)


def _holiday(day: str, name: str, source: str = NSE, provisional: bool = False) -> dict:
    return _row(day, "NSE_HOLIDAY", "HALT", name, source, provisional)


CALENDAR_2026_2027: list[dict] = [
    # RBI monetary policy: 2025-26's last meeting, then 2026-27 and 2027-28 (provisional).
    _rbi("2026-02-06", provisional=False),
    _rbi("2026-04-08"),
    _rbi("2026-06-05"),
    _rbi("2026-08-06"),
    _rbi("2026-10-01"),
    _rbi("2026-12-04"),
    _rbi("2027-02-05"),
    _rbi("2027-04-07"),
    _rbi("2027-06-04"),
    _rbi("2027-08-06"),
    _rbi("2027-10-01"),
    _rbi("2027-12-03"),
    # Union Budget.
    _row("2026-02-01", "BUDGET", "NO_NEW_ENTRIES", "Union Budget 2026-27 (Sunday; special session)", BUDGET),
    _row("2027-02-01", "BUDGET", "NO_NEW_ENTRIES", "Union Budget 2027-28", BUDGET, provisional=True),
    # US CPI releases (the month's CPI comes out the following month).
    *(
        _cpi(d)
        for d in (
            "2026-01-13",
            "2026-02-11",
            "2026-03-11",
            "2026-04-10",
            "2026-05-12",
            "2026-06-10",
            "2026-07-14",
            "2026-08-12",
            "2026-09-11",
            "2026-10-14",
            "2026-11-10",
            "2026-12-10",
        )
    ),
    *(
        _cpi(d, provisional=True)
        for d in (
            "2027-01-13",
            "2027-02-10",
            "2027-03-10",
            "2027-04-13",
            "2027-05-12",
            "2027-06-10",
            "2027-07-14",
            "2027-08-11",
            "2027-09-14",
            "2027-10-13",
            "2027-11-10",
            "2027-12-10",
        )
    ),
    # NSE trading holidays 2026 (weekdays only; weekend holidays need no entry).
    _holiday("2026-01-26", "Republic Day"),
    _holiday("2026-03-03", "Holi"),
    _holiday("2026-03-26", "Shri Ram Navami"),
    _holiday("2026-03-31", "Shri Mahavir Jayanti"),
    _holiday("2026-04-03", "Good Friday"),
    _holiday("2026-04-14", "Dr. Baba Saheb Ambedkar Jayanti"),
    _holiday("2026-05-01", "Maharashtra Day"),
    _holiday("2026-05-28", "Bakri Id"),
    _holiday("2026-06-26", "Muharram"),
    _holiday("2026-09-14", "Ganesh Chaturthi"),
    _holiday("2026-10-02", "Mahatma Gandhi Jayanti"),
    _holiday("2026-10-20", "Dussehra"),
    _holiday("2026-11-10", "Diwali Balipratipada"),
    _holiday("2026-11-24", "Prakash Gurpurb Sri Guru Nanak Dev"),
    _holiday("2026-12-25", "Christmas"),
    # NSE 2027: the fixed-date national holidays on weekdays (the rest come with NSE's circular).
    _holiday("2027-01-26", "Republic Day", NSE_2027, provisional=True),
]

KINDS = {"RBI_POLICY", "BUDGET", "US_CPI", "EXCHANGE_HALT", "NSE_HOLIDAY", "OTHER"}
ACTIONS = {"NO_NEW_ENTRIES", "REDUCE_ONLY", "HALT"}


class CalendarError(ValueError):
    pass


def parse_rows(records: list[dict], *, default_source: str = "") -> list[dict]:
    """Validate rows ``{date, kind, action?, note?, source?, provisional?}``; raise
    ``CalendarError`` listing every bad row."""
    rows, errors = [], []
    for number, raw in enumerate(records, start=1):
        try:
            day = dt.date.fromisoformat(str(raw.get("date", "")).strip())
        except ValueError:
            errors.append(f"row {number}: date must be YYYY-MM-DD, got {raw.get('date')!r}")
            continue
        kind = str(raw.get("kind", "")).strip().upper()
        action = str(raw.get("action") or ("HALT" if kind == "NSE_HOLIDAY" else "NO_NEW_ENTRIES")).strip().upper()
        if kind not in KINDS:
            errors.append(f"row {number}: kind must be one of {', '.join(sorted(KINDS))}, got {kind!r}")
            continue
        if action not in ACTIONS:
            errors.append(f"row {number}: action must be one of {', '.join(sorted(ACTIONS))}, got {action!r}")
            continue
        provisional = str(raw.get("provisional", "")).strip().lower() in ("1", "true", "yes", "y")
        rows.append(
            {
                "date": day,
                "kind": kind,
                "action": action,
                "note": str(raw.get("note") or "")[:200],
                "source": str(raw.get("source") or default_source)[:200],
                "provisional": provisional,
            }
        )
    if errors:
        raise CalendarError("; ".join(errors))
    return rows
