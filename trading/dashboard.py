"""The dashboard panels: one named partial each, in ``trading/panels.html``.

``render_panel(name)`` renders a panel from committed rows. The views call it
for htmx requests (and the pages include the same partials); the publisher
calls it through ``trading.events.RENDERERS`` to push the HTML over the
websocket, where htmx swaps it in by the element's id. One template, two
delivery paths.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.template.loader import render_to_string

from quanthub.clock import IST
from trading import charts, selectors

UNDERLYINGS = ("NIFTY", "BANKNIFTY")
TEMPLATE = "trading/panels.html"


def _account(data: dict | None = None) -> str:
    return (data or {}).get("account") or settings.QUANTHUB_ACCOUNT


def _ctx_overview(account: str, data: dict) -> dict:
    ov = selectors.overview(account)
    points = [(t.timestamp(), float(v)) for t, v in ov.equity]
    labels = None
    if ov.equity:
        labels = tuple(t.astimezone(IST).strftime("%H:%M") for t in (ov.equity[0][0], ov.equity[-1][0]))
    return {
        "ov": ov,
        "equity_svg": charts.line_chart(points, title="Net equity today (₹)", drawdown=True, x_labels=labels),
    }


def _ctx_positions(account: str, data: dict) -> dict:
    return {"positions": selectors.open_positions(account)}


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


def _ctx_chain(account: str, data: dict) -> dict:
    underlying = data.get("underlying") or UNDERLYINGS[0]
    chain = selectors.option_chain(underlying, account, rows=data.get("rows"))
    if isinstance(chain["at"], str):
        chain["at"] = dt.datetime.fromisoformat(chain["at"])
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


def render_panel(name: str, data: dict | None = None, *, request=None, account: str | None = None) -> str:
    context = panel_context(name, data, account=account)
    return render_to_string(f"{TEMPLATE}#{name}", context, request=request)


# --- what each event re-renders ------------------------------------------------------

EVENT_PANELS: dict[str, tuple[str, ...]] = {
    # The engine sends "heartbeat" at most once a wall-clock second: marks, P&L and
    # positions move with every snapshot, so they ride on it instead of on each fill.
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


def _renderer(kind: str):
    def render(data: dict[str, Any]) -> list[tuple[str, str]]:
        out = []
        for name in EVENT_PANELS[kind]:
            # Kill All progress and pushed chains carry their content; other panels read the database.
            panel_data = data if name in ("killall", "chain") else {"account": data.get("account")}
            out.append((panel_id(name, data), render_panel(name, panel_data)))
        return out

    return render


def panel_id(name: str, data: dict | None = None) -> str:
    if name == "chain":
        return f"panel-chain-{(data or {}).get('underlying') or UNDERLYINGS[0]}"
    return f"panel-{name}"


def register() -> None:
    from trading.events import RENDERERS

    for kind in EVENT_PANELS:
        RENDERERS.setdefault(kind, _renderer(kind))


def chain_rows(snapshot) -> list[dict]:
    """The rows of a chain snapshot as the chain panel wants them, in JSON-safe
    types (they travel through the channel layer): a push straight from the
    engine's memory, without waiting for the writer's flush."""
    at = snapshot.received_at.isoformat()
    spot = round(float(snapshot.underlying_ltp), 2)
    return [
        {
            "security_id": str(snapshot.security_id[i]),
            "strike": round(float(snapshot.strike[i]), 2),
            "option_type": int(snapshot.option_type[i]),
            "oi": int(snapshot.oi[i]),
            "oi_change": int(snapshot.oi[i] - snapshot.prev_oi[i]),
            "volume": int(snapshot.volume[i]),
            "iv": float(snapshot.iv[i]),
            "delta": float(snapshot.delta[i]),
            "gamma": float(snapshot.gamma[i]),
            "theta": float(snapshot.theta[i]),
            "vega": float(snapshot.vega[i]),
            "last": round(float(snapshot.last_price[i]), 2),
            "underlying": spot,
            "at": at,
        }
        for i in range(len(snapshot))
    ]
