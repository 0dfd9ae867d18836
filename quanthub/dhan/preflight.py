"""Before a live session: is everything Dhan needs in place? One line per check,
pass or fail with the reason.

=================  ==================================================================
line               passes when
=================  ==================================================================
token              ``GET /profile`` accepts the token; its validity is more than an hour away
static IP          ``GET /ip/getIP`` lists a whitelisted static IP (required for orders)
data plan          an option-chain request answers (806: no data plan)
kill switch        ``GET /killswitch`` says it is off (on, every order is refused)
P&L exit           ``GET /pnlExit`` reports an active exit (the engine sets it at start)
funds              ``GET /fundlimit`` answers with money available
instrument master  loaded within the last day on this host (``manage.py load_instruments``)
clock skew         our clock is within 2 s of the Date header of Dhan's answers
=================  ==================================================================

``manage.py dhan_preflight`` prints them; the operators' page at
``/trading/preflight/`` shows them; ``run_engine --broker dhan`` refuses to
start on a failing line unless ``--force`` (which is audited).
"""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import asdict, dataclass

from quanthub.clock import IST
from quanthub.dhan.errors import DhanError
from quanthub.dhan.http import check

MAX_SKEW_S = 2.0
MIN_TOKEN_LEFT = dt.timedelta(hours=1)
MAX_MASTER_AGE = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def _parse_validity(text: str) -> dt.datetime | None:
    for fmt in ("%d/%m/%Y %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            return dt.datetime.strptime(str(text).strip()[:19], fmt).replace(tzinfo=IST)  # noqa: DTZ007
        except ValueError:
            continue
    return None


def _line(name: str, fn) -> Line:
    try:
        ok, detail = fn()
    except DhanError as exc:
        return Line(name, False, f"{type(exc).__name__.removeprefix('Dhan')}: {exc}")
    except Exception as exc:  # a check that cannot run is a failing line, never a crash
        return Line(name, False, f"could not check: {type(exc).__name__}")
    return Line(name, ok, detail)


def run(client, *, now: dt.datetime, master_loaded_at: dt.datetime | None, underlying: tuple[str, str] | None = None):
    """Every line. ``client``: a dhanhq client on ``ContainedHTTP``; ``underlying``: (security id, expiry ISO)."""
    http = client.dhan_http
    lines: list[Line] = []
    skew: list[float] = []

    def get(endpoint: str):
        reply = http.get(endpoint)
        date = (reply.get("headers") or {}).get("Date") if isinstance(reply, dict) else None
        if date:
            skew.append((now - email.utils.parsedate_to_datetime(date)).total_seconds())
        return check(reply, endpoint)

    def token():
        profile = get("/profile") or {}
        validity = _parse_validity(profile.get("tokenValidity", ""))
        if validity is None:
            return True, "accepted (validity not reported)"
        left = validity - now
        if left < MIN_TOKEN_LEFT:
            return False, f"expires {validity:%d %b %H:%M} IST: renew it (manage.py refresh_dhan_token)"
        return True, f"valid until {validity:%d %b %H:%M} IST"

    def static_ip():
        data = get("/ip/getIP") or {}
        primary = data.get("primaryIP") or data.get("ip") or ""
        if not primary:
            return False, "no static IP whitelisted: Dhan refuses orders from an unlisted address"
        secondary = data.get("secondaryIP") or ""
        return True, f"{primary}" + (f" (and {secondary})" if secondary else "")

    def data_plan():
        if underlying is None:
            return False, "no instruments loaded to ask a chain for"
        data = check(client.option_chain(int(underlying[0]), "IDX_I", underlying[1]), "optionchain")
        inner = data.get("data", data) if isinstance(data, dict) else {}
        if not isinstance(inner, dict) or "oc" not in inner:
            return False, "the option chain answered without a chain"
        return True, "option chain answers"

    def kill_switch():
        data = get("/killswitch") or {}
        status = str(data.get("killSwitchStatus", "")).upper()
        if "DEACTIVATE" in status:
            return True, "off"
        if "ACTIVATE" in status:
            return False, "ON: every order will be refused today"
        return False, f"status not understood: {status[:40]!r}"

    def pnl_exit():
        data = get("/pnlExit") or {}
        status = str(data.get("pnlExitStatus") or data.get("status") or "").upper()
        # Dhan v2's GET /pnlExit: pnlExitStatus, profit, loss, segments, enable_kill_switch.
        loss = data.get("loss") or data.get("lossValue")
        switch = data.get("enable_kill_switch", data.get("enableKillSwitch"))
        if status in ("ACTIVE", "ENABLED") or (not status and loss):
            return True, f"active at ₹{loss}" + (" with the kill switch" if switch in (True, "true") else "")
        return False, "not set: the engine sets it at start; until then the broker would not flatten a runaway loss"

    def funds():
        data = get("/fundlimit") or {}
        available = data.get("availabelBalance", data.get("availableBalance"))
        if available is None:
            return False, "no available balance in the answer"
        if float(available) <= 0:
            return False, f"₹{available} available"
        return True, f"₹{available} available, ₹{data.get('utilizedAmount', 0)} utilised"

    def master():
        if master_loaded_at is None:
            return False, "never loaded: manage.py load_instruments PATH"
        age = now - master_loaded_at
        ok = age <= MAX_MASTER_AGE
        hours = age.total_seconds() / 3600
        return ok, f"loaded {hours:.1f} h ago" + ("" if ok else ": load today's scrip master")

    for name, fn in (
        ("token", token),
        ("static IP", static_ip),
        ("data plan", data_plan),
        ("kill switch", kill_switch),
        ("P&L exit", pnl_exit),
        ("funds", funds),
        ("instrument master", master),
    ):
        lines.append(_line(name, fn))
    if skew:
        worst = max(skew, key=abs)
        lines.append(Line("clock skew", abs(worst) <= MAX_SKEW_S, f"{worst:+.1f} s against Dhan's clock"))
    else:
        lines.append(Line("clock skew", False, "no timestamp from Dhan to compare with"))
    return lines


def gather(*, client=None, now: dt.datetime | None = None) -> list[Line]:
    """The pre-flight for the configured account (database reads included)."""
    from django.conf import settings
    from django.utils import timezone

    from marketdata.master import last_loaded_at
    from marketdata.models import Instrument
    from quanthub.dhan.session import dhan_client
    from quanthub.dhan.tokens import current_token

    now = now or timezone.now()
    token = current_token()
    if not settings.DHAN_CLIENT_ID or not token:
        return [Line("token", False, "DHAN_CLIENT_ID and an access token are needed (or manage.py refresh_dhan_token)")]
    client = client or dhan_client(settings.DHAN_CLIENT_ID, token)
    loaded = last_loaded_at()
    option = (
        Instrument.objects.filter(kind__in=["CE", "PE"], is_active=True, expiry__gte=now.astimezone(IST).date())
        .exclude(underlying__security_id="")
        .select_related("underlying")
        .order_by("expiry")
        .first()
    )
    underlying = (option.underlying.security_id, option.expiry.isoformat()) if option else None
    return run(client, now=now, master_loaded_at=loaded, underlying=underlying)
