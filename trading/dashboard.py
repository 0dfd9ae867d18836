"""The dashboard panels: one named partial each, in ``trading/panels.html``.

``render_panel(name)`` renders a panel from committed rows. The views call it
for htmx requests (and the pages include the same partials); the publisher
calls it through ``trading.events.RENDERERS`` to push the HTML over the
websocket, where htmx swaps it in by the element's id. One template, two
delivery paths.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.template.loader import render_to_string

from quanthub.clock import IST
from trading import charts, selectors
from trading.templatetags import qh

UNDERLYINGS = ("NIFTY", "BANKNIFTY")
TEMPLATE = "trading/panels.html"
CENTS = Decimal("0.01")


def _account(data: dict | None = None) -> str:
    return (data or {}).get("account") or settings.QUANTHUB_ACCOUNT


def _ctx_overview(account: str, data: dict) -> dict:
    ov = selectors.overview(account)
    points = [(t.timestamp(), float(v)) for t, v in ov.equity]
    labels, x_end = None, 0.0
    if ov.equity:
        # The axis runs to the end of the current minute (its right-hand label): within
        # the minute, only the live point moves.
        end = ov.equity[-1][0].replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        labels = tuple(t.astimezone(IST).strftime("%H:%M") for t in (ov.equity[0][0], end))
        x_end = end.timestamp()
    # The curve's whole minutes and its live end (the book's figure now) as two layers:
    # each second's push carries the small live layer, the minutes once a minute.
    history, live = charts.live_line_chart(
        points[:-1], points[-1] if points else None, x_end=x_end, title="Net equity today (₹)", x_labels=labels
    )
    return {"ov": ov, "equity_svg": history, "equity_live_svg": live}


def _ctx_positions(account: str, data: dict) -> dict:
    rows = selectors.open_positions(account)
    beat = selectors.latest_heartbeat(account)
    return {
        "positions": rows,
        "net_greeks": selectors.net_greeks(rows),
        "positions_at": beat.market_time if beat is not None else None,
    }


def _ctx_risk(account: str, data: dict) -> dict:
    return {"risk": selectors.risk_panel(account)}


def _ctx_scorecards(account: str, data: dict) -> dict:
    return {"cards": selectors.scorecards(account)}


def _ctx_alerts(account: str, data: dict) -> dict:
    from trading.models import Alert

    return {"alerts": list(Alert.objects.filter(account=account, acknowledged_at__isnull=True)[:50])}


def _percentiles(values: list[float]) -> dict[int, float | None]:
    from trading.backtest.report import percentile

    return {q: percentile(values, q) for q in (50, 90, 99)}


def _ctx_latency(account: str, data: dict) -> dict:
    acks = selectors.latency_ms(account)
    beat = selectors.latest_heartbeat(account)
    engine = list((beat.stats or {}).get("tick_to_intent_recent_ms", [])) if beat else []
    return {
        "latency_svg": charts.histogram(acks, title="Snapshot → broker acknowledgement (engine clock)", unit="ms"),
        "latency_n": len(acks),
        "latency_pct": _percentiles(acks),
        "engine_svg": charts.histogram(engine, title="Snapshot → order intent (wall clock)", unit="ms"),
        "engine_n": len(engine),
        "engine_pct": _percentiles(engine),
        "simulated": bool(beat and beat.feed != "dhan"),
        "paper_latency": (beat.stats or {}).get("paper_latency_ms") if beat else None,
        "latency_at": beat.market_time if beat else None,
        "slippage": selectors.slippage(account),
    }


def _ctx_alphadecay(account: str, data: dict) -> dict:
    points = selectors.alpha_decay(account)
    return {
        "alpha_svg": charts.scatter(
            points,
            title="Net P&L (₹) against minutes held",
            x_labels=("0 min", f"{max((p[0] for p in points), default=0):.0f} min"),
        ),
        "alpha_n": len(points),
    }


def fact_rows(data: dict) -> list[dict] | None:
    """The rows of a chain fact (``trading.events.chain_fact``: columns), as the chain
    selector reads them from the database; None when the fact carries no chain."""
    if "security_id" not in data:
        return None
    at = dt.datetime.fromisoformat(data["at"])
    spot = Decimal(str(data["spot"]))
    expiry = dt.date.fromisoformat(data["expiry"]) if data.get("expiry") else None
    columns = ("security_id", "strike", "option_type", "oi", "oi_change", "volume", "bid", "ask", "last")
    greeks = ("iv", "delta", "gamma", "theta", "vega")
    rows = []
    for i in range(len(data["security_id"])):
        row = {name: data[name][i] for name in (*columns, *greeks)}
        for money in ("strike", "bid", "ask", "last"):
            row[money] = Decimal(str(row[money])).quantize(CENTS)
        rows.append({**row, "underlying": spot, "at": at, "expiry": expiry})
    return rows


def _ctx_chain(account: str, data: dict) -> dict:
    underlying = data.get("underlying") or UNDERLYINGS[0]
    rows = fact_rows(data)
    # A pushed chain swaps the panel alone: the page's expiry picker, outside it, needs no new list.
    chain = selectors.option_chain(
        underlying, account, rows=rows, expiry=data.get("expiry_wanted"), with_expiries=rows is None
    )
    # Each side's cell classes, worked out once per quote rather than once per cell.
    for row in chain["rows"]:
        for quote in (row.ce, row.pe):
            if quote is not None:
                itm = "itm" if quote["itm"] else ""
                quote["css"] = itm
                quote["css_signal"] = " ".join(c for c in (itm, "signal" if quote["signal"] else "") if c)
                quote["css_change"] = " ".join(c for c in (itm, qh.sign(quote["oi_change"])) if c)
    return {"chain": chain}


def _ctx_killall(account: str, data: dict) -> dict:
    from audit.models import AuditRecord

    last = None
    if not data:
        record = AuditRecord.objects.filter(action="kill_all.finished").order_by("-seq").first()
        if record is not None:
            last = {"at": record.created_at, "actor": record.actor, **(record.payload or {})}
    return {"kill": data or None, "last_kill": last}


PANELS = {
    "overview": _ctx_overview,
    "positions": _ctx_positions,
    "risk": _ctx_risk,
    "scorecards": _ctx_scorecards,
    "alerts": _ctx_alerts,
    "latency": _ctx_latency,
    "alphadecay": _ctx_alphadecay,
    "chain": _ctx_chain,
    "killall": _ctx_killall,
}


def panel_context(name: str, data: dict | None = None, *, account: str | None = None) -> dict[str, Any]:
    data = data or {}
    return PANELS[name](account or _account(data), data)


def render_panel(
    name: str, data: dict | None = None, *, request=None, account: str | None = None, can: dict | None = None
) -> str:
    """One panel. ``can``: the controls the viewer may use (``ui_can``); from the
    request's user when there is a request, none otherwise."""
    context = panel_context(name, data, account=account)
    if request is None:
        context["can"] = can or {}
    elif can is not None:
        context["can"] = can
    return render_to_string(f"{TEMPLATE}#{name}", context, request=request)


# --- what each fact re-renders -------------------------------------------------------

EVENT_PANELS: dict[str, tuple[str, ...]] = {
    # The engine sends "heartbeat" at most once a wall-clock second: marks, P&L,
    # positions and their exit orders move with every snapshot, so they ride on it
    # instead of on each fill.
    "heartbeat": ("overview", "positions", "risk", "scorecards"),
    "analytics": ("latency", "alphadecay"),
    "alert": ("alerts", "overview"),
    "alert_acknowledged": ("alerts", "overview"),
    "kill_all": ("killall",),
    "chain": ("chain",),
    "strategy": ("scorecards",),
    "limits": ("risk",),
    "trading_state": ("overview", "risk"),
}

# Panels the websocket sends in parts, by the element ids of the partials they are made
# of: one field moving (the P&L each second) does not resend the rest (the day's
# equity curve). The page renders the panel whole; a push swaps the parts that changed.
FRAGMENTS: dict[str, tuple[str, ...]] = {
    "overview": ("overview-kpis", "overview-equity", "overview-equity-live"),
}

# Panels whose content is the fact itself (Kill All's progress, the engine's chain);
# every other panel is read from committed rows.
FACT_PANELS = ("killall", "chain")


def panel_keys(kind: str, data: dict[str, Any]) -> list[str]:
    """The panel keys a fact changes: a panel name, or ``chain-<underlying>``."""
    return [
        f"chain-{data.get('underlying') or UNDERLYINGS[0]}" if name == "chain" else name
        for name in EVENT_PANELS.get(kind, ())
    ]


def render_key(
    key: str, data: dict[str, Any] | None = None, *, account: str | None = None, can: dict | None = None
) -> str:
    """Render one panel key (``overview``, ``chain-NIFTY``) from a fact's data, or from
    the database when the fact carries no content for it (``data`` None)."""
    data = dict(data or {})
    if key.startswith("chain-"):
        underlying = key[6:]
        if data.get("underlying") != underlying:
            data = {}
        data["underlying"] = underlying
        return render_panel("chain", data, account=account, can=can)
    return render_panel(key, data if key in FACT_PANELS else {}, account=account, can=can)


def render_keys(
    keys: list[str], data: dict[str, Any] | None = None, *, account: str | None = None, can: dict | None = None
) -> dict[str, str]:
    """Several panels of one fact in one pass: the engine's latest heartbeat (which
    most panels read) is read once for all of them."""
    with selectors.one_read_of_the_heartbeat():
        return {key: render_key(key, data, account=account, can=can) for key in keys}


def render_fragments(
    name: str, data: dict[str, Any] | None = None, *, account: str | None = None, can: dict | None = None
) -> list[tuple[str, str]]:
    """A panel of ``FRAGMENTS`` as its parts: (element id, HTML) of each, rendered from
    one context by the partials the panel's own partial is made of."""
    context = panel_context(name, data if name in FACT_PANELS else {}, account=account)
    context["can"] = can or {}
    return [(part, render_to_string(f"{TEMPLATE}#{part}", context)) for part in FRAGMENTS[name]]


def render_parts(
    keys: list[str], data: dict[str, Any] | None = None, *, account: str | None = None, can: dict | None = None
) -> dict[str, list[tuple[str, str]]]:
    """What the websocket sends of several panels of one fact: per key, the (element
    id, HTML) of each part htmx swaps by its id. A panel is one part, its section,
    or the fragments ``FRAGMENTS`` names, each compared and sent on its own."""
    with selectors.one_read_of_the_heartbeat():
        return {
            key: render_fragments(key, data, account=account, can=can)
            if key in FRAGMENTS
            else [(key, render_key(key, data, account=account, can=can))]
            for key in keys
        }


def valid_key(key: str) -> bool:
    if key.startswith("chain-"):
        return key[6:] in UNDERLYINGS
    return key in PANELS and key != "chain"


def panel_id(name: str, data: dict | None = None) -> str:
    if name == "chain":
        return f"panel-chain-{(data or {}).get('underlying') or UNDERLYINGS[0]}"
    return f"panel-{name}"


def register() -> None:
    from trading.events import SHOWN

    SHOWN.update(EVENT_PANELS)
