"""Dashboard pages, htmx panel refreshes and the dashboard's few actions.

Every view needs a logged-in user with one of the three roles; actions check
their own permission too (a control the user may not use is not rendered at all). Actions answer
with the panel they changed, so htmx swaps it in at once; the websocket push
that follows the commit brings every other open page up to date.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
from html import escape

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from audit.chain import append as audit_append
from quanthub.roles import roles_of
from trading import dashboard
from trading.events import publish_on_commit, send_now
from trading.models import Alert, Position, Strategy
from trading.orders.requests import ExitRefused, refuse_unless_exitable, request_exit, request_kill_all
from trading.services import set_strategy_enabled
from trading.timeline import account_now

log = logging.getLogger(__name__)


def role_required(view):
    """Login, then any of the three roles; a user without one gets 403."""

    @functools.wraps(view)
    @login_required
    def wrapped(request, *args, **kwargs):
        if not roles_of(request.user):
            raise PermissionDenied("Your account has no Quant Hub role.")
        return view(request, *args, **kwargs)

    return wrapped


def _require(request, perm: str) -> None:
    if not request.user.has_perm(perm):
        raise PermissionDenied(f"You lack the permission {perm}.")


def _account() -> str:
    return settings.QUANTHUB_ACCOUNT


def _page(request, template: str, panels: tuple[str, ...], extra: dict | None = None):
    context: dict = {}
    for name in panels:
        context.update(dashboard.panel_context(name, extra, account=_account()))
    context.update(extra or {})
    live = [name for name in panels if name != "chain"]
    if "chain" in panels:
        chain = context["chain"]
        wanted = chain["wanted_expiry"]
        live.append(f"chain-{chain['underlying']}" + (f"@{wanted.isoformat()}" if wanted else ""))
    context["live_panels"] = ",".join(live)
    return render(request, template, context)


@require_GET
@role_required
def overview(request):
    return _page(request, "trading/overview.html", ("overview", "killall", "risk", "positions", "scorecards", "alerts"))


@require_GET
@role_required
def positions(request):
    return _page(request, "trading/positions.html", ("positions", "killall", "risk"))


@require_GET
@role_required
def strategies(request):
    return _page(request, "trading/strategies.html", ("scorecards", "risk"))


@require_GET
@role_required
def analytics(request):
    return _page(request, "trading/analytics.html", ("latency", "alphadecay"))


@require_GET
@role_required
def chain(request):
    underlying = request.GET.get("underlying", dashboard.UNDERLYINGS[0])
    if underlying not in dashboard.UNDERLYINGS:
        return HttpResponse(f"Unknown underlying {underlying!r}.", status=400, content_type="text/plain")
    expiry = request.GET.get("expiry") or None
    if expiry is not None:
        try:
            dt.date.fromisoformat(expiry)
        except ValueError:
            return HttpResponse("expiry must be a date (YYYY-MM-DD).", status=400, content_type="text/plain")
    return _page(
        request,
        "trading/chain.html",
        ("chain",),
        {"underlying": underlying, "underlyings": dashboard.UNDERLYINGS, "expiry_wanted": expiry},
    )


@require_GET
@role_required
def alerts(request):
    return _page(request, "trading/alerts.html", ("alerts",))


@require_GET
@role_required
def panel(request, name: str):
    """One panel, for an htmx refresh (``hx-get``)."""
    if name not in dashboard.PANELS:
        raise Http404("No such panel.")
    data = {}
    if name == "chain":
        underlying = request.GET.get("underlying", dashboard.UNDERLYINGS[0])
        if underlying not in dashboard.UNDERLYINGS:
            return HttpResponse(f"Unknown underlying {underlying!r}.", status=400, content_type="text/plain")
        data["underlying"] = underlying
        data["expiry_wanted"] = request.GET.get("expiry") or None
    return HttpResponse(dashboard.render_panel(name, data, request=request, account=_account()))


# --- actions ---------------------------------------------------------------------------

_running: dict[str, threading.Thread] = {}
_running_lock = threading.Lock()


def _in_background(key: str, target, *args) -> bool:
    """Run a flattening job on its own thread (it takes seconds; the request must not
    wait). One job per key at a time: a second press while one runs does nothing."""
    with _running_lock:
        current = _running.get(key)
        if current is not None and current.is_alive():
            return False

        def run():
            from django.db import close_old_connections

            try:
                target(*args)
            except Exception:
                log.exception("background job failed", extra={"job": key})
            finally:
                close_old_connections()

        thread = threading.Thread(target=run, name=f"qh-{key}", daemon=True)
        _running[key] = thread
        thread.start()
        return True


def wait_for_jobs(timeout: float = 30.0) -> None:
    """For tests and shutdown: wait for running Kill All / exit jobs."""
    for thread in list(_running.values()):
        thread.join(timeout)


@require_POST
@role_required
def kill_all(request):
    """Hand a Kill All to the account's one sender (the engine, or standalone when none
    takes it within 2 s), on a background thread; progress and the result come over
    the websocket."""
    _require(request, "trading.kill_all")
    actor = f"user:{request.user.get_username()}"
    started = _in_background(f"kill_all:{_account()}", request_kill_all, actor, "dashboard Kill All", _account())
    data = {"stage": "started" if started else "already running", "legs": 0, "sent": 0, "filled": 0, "cancelled": 0}
    log.warning("kill all pressed", extra={"actor": actor, "started": started})
    return HttpResponse(dashboard.render_panel("killall", data, request=request, account=_account()))


@require_POST
@role_required
def exit_position(request, pk: int):
    """Exit one position (and its signal's hedge) through the account's one sender: the
    engine when it runs, so the strategy holding it hears the fills; standalone when no
    engine takes it within 2 s. Worked in the background; the row says what happened."""
    _require(request, "trading.exit_position")
    position = get_object_or_404(Position.objects.select_related("instrument"), pk=pk, account=_account())
    actor = f"user:{request.user.get_username()}"
    label = f"{position.instrument.display} ({position.net_quantity})"
    try:
        refuse_unless_exitable(position)
        _in_background(f"exit:{pk}", request_exit, pk, actor, _account())
        text, css = f"Exit requested for {label}.", "warn"
    except ExitRefused as exc:
        text, css = f"{position.instrument.display}: {exc}.", "muted"
    return HttpResponse(f'<tr id="position-{pk}"><td colspan="15" class="{css}">{escape(text)}</td></tr>')


@require_POST
@role_required
def acknowledge_alert(request, pk: int):
    _require(request, "trading.acknowledge_alert")
    actor = request.user.get_username()
    with transaction.atomic():
        at = account_now(_account())  # the alert's own time line (simulated in the demo)
        updated = Alert.objects.filter(pk=pk, account=_account(), acknowledged_at__isnull=True).update(
            acknowledged_at=at, acknowledged_by=actor
        )
        if updated:
            audit_append("alert.acknowledged", actor=f"user:{actor}", subject=f"alert:{pk}", payload={}, at=at)
            publish_on_commit("alert_acknowledged", {"id": pk}, account=_account())
    if not updated and not Alert.objects.filter(pk=pk, account=_account()).exists():
        raise Http404("No such alert.")
    return HttpResponse(dashboard.render_panel("alerts", request=request, account=_account()))


@require_POST
@role_required
def toggle_strategy(request, pk: int):
    _require(request, "trading.toggle_strategy")
    strategy = get_object_or_404(Strategy, pk=pk)
    # The same write (and audit action, strategy.enabled / strategy.disabled) as the API's.
    set_strategy_enabled(strategy, not strategy.enabled, actor=f"user:{request.user.get_username()}")
    send_now("strategy", {"id": pk, "enabled": strategy.enabled}, account=_account())
    return HttpResponse(dashboard.render_panel("scorecards", request=request, account=_account()))


@require_GET
@role_required
def preflight(request):
    """The Dhan pre-flight for operators: each line pass or fail with its reason (read-only calls)."""
    from quanthub.dhan.preflight import gather

    lines = gather()
    return render(
        request,
        "trading/preflight.html",
        {"lines": lines, "ok": all(line.ok for line in lines), "checked_at": timezone.now()},
    )
