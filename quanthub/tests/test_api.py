"""The REST API: every endpoint's happy path, wrong role, anonymous, bad input,
token authentication, the schema, and the health probes."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audit.models import AuditRecord
from marketdata.book import QuoteBook
from marketdata.models import Instrument
from quanthub.clock import IST, RealClock
from risk.models import RiskLimits, TradingState
from risk.services import set_trading_state
from trading.brokers.paper import PaperBroker
from trading.brokers.ratelimit import RateLimiter
from trading.models import Alert, EngineHeartbeat, Order, Position, Strategy
from trading.orders.manager import OrderManager

pytestmark = pytest.mark.django_db

V1 = "/api/v1/"


def client_for(user=None, *, token: bool = False) -> APIClient:
    client = APIClient()
    if user is not None and token:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    elif user is not None:
        client.force_authenticate(user)
    return client


def store_quotes(instruments, book: QuoteBook, now: dt.datetime) -> None:
    """Quotes in the live book, and stored as the engine would have stored them."""
    from trading.conftest import quotes_for as _quotes_for

    _quotes_for(instruments, book, now)


def open_positions(count: int = 1) -> list[Position]:
    """Open long option positions through the real OMS and paper broker."""
    now = timezone.now().astimezone(IST)
    book = QuoteBook()
    clock = RealClock()
    oms = OrderManager(PaperBroker(clock=clock, book=book), RateLimiter(rate=1000), clock=clock, book=book)
    instruments = list(
        Instrument.objects.select_related("underlying")
        .filter(kind__in=["CE", "PE"], is_active=True)
        .order_by("underlying__symbol", "strike", "kind")[:count]
    )
    store_quotes(instruments, book, now)
    from trading.conftest import buy_two_lots

    async_to_sync(buy_two_lots)(oms, book, instruments)
    return list(Position.objects.exclude(net_quantity=0).select_related("instrument"))


def beat(*, age_s: float = 0.0, role: str = EngineHeartbeat.Role.ACTIVE, stale_feed: bool = False) -> EngineHeartbeat:
    at = timezone.now() - dt.timedelta(seconds=age_s)
    return EngineHeartbeat.objects.create(
        engine_id=f"test-{age_s}-{role}",
        role=role,
        started_at=at,
        beat_at=at,
        feed_health={"stale": stale_feed, "chain_age_s": {"NIFTY": 0.4}},
    )


# --- authentication -----------------------------------------------------------------------


ENDPOINTS = [
    ("get", "summary/"),
    ("get", "positions/"),
    ("post", "positions/1/exit/"),
    ("get", "orders/"),
    ("get", "trades/"),
    ("get", "strategies/"),
    ("post", "strategies/1/toggle/"),
    ("get", "risk/limits/"),
    ("patch", "risk/limits/"),
    ("get", "risk/state/"),
    ("post", "risk/kill-all/"),
    ("get", "audit/export/"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_refuses_anonymous_clients(method, path):
    assert getattr(APIClient(), method)(V1 + path).status_code == 401


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_refuses_a_user_without_a_role(make_user, method, path):
    assert getattr(client_for(make_user("nobody")), method)(V1 + path).status_code == 403


def test_it_refuses_anonymous_clients_with_401():
    response = APIClient().get(V1 + "positions/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_it_accepts_a_token(trader):
    response = client_for(trader, token=True).get(V1 + "positions/")
    assert response.status_code == 200


def test_it_refuses_a_bad_token():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get(V1 + "positions/").status_code == 401


def test_it_accepts_a_session(trader):
    client = APIClient()
    client.force_login(trader)
    assert client.get(V1 + "strategies/").status_code == 200


def test_it_refuses_a_user_without_a_role(make_user):
    assert client_for(make_user("nobody")).get(V1 + "positions/").status_code == 403


def test_the_token_command_creates_a_token(trader, capsys):
    call_command("drf_create_token", "trader1")
    key = Token.objects.get(user=trader).key
    assert key in capsys.readouterr().out
    assert client_for().get(V1 + "trades/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 200


# --- schema ----------------------------------------------------------------------------------


def test_the_schema_generates_without_warnings(tmp_path):
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for path in ("/api/v1/positions/{id}/exit/", "/api/v1/risk/kill-all/", "/api/v1/audit/export/"):
        assert path in text


def test_the_schema_needs_a_login(trader):
    assert APIClient().get("/api/schema/").status_code in (401, 403)
    client = APIClient()
    client.force_login(trader)
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert b"Quant Hub API" in response.content
    assert client.get("/api/schema/", {"format": "json"}).json()["info"]["title"] == "Quant Hub API"


# --- summary ----------------------------------------------------------------------------------


def test_the_summary_reports_today(trader, demo_market):
    [position] = open_positions(1)
    Position.objects.filter(pk=position.pk).update(unrealised_pnl=Decimal("120.50"))
    beat(age_s=1)
    Alert.objects.create(level=Alert.Level.WARNING, source="feed", title="chain stale")
    response = client_for(trader, token=True).get(V1 + "summary/")
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["open_positions"] == 1 and data["open_alerts"] == 1
    assert data["trading_state"] == "ACTIVE"
    assert data["engine"]["role"] == "ACTIVE" and data["engine"]["alive"] is True
    assert data["feed_health"]["stale"] is False
    # Money travels as exact decimal strings.
    assert Decimal(data["gross_pnl"]) == Decimal("120.50") + position.realised_pnl
    assert Decimal(data["net_pnl"]) == Decimal(data["gross_pnl"]) - Decimal(data["charges"])


def test_the_summary_needs_a_login():
    assert APIClient().get(V1 + "summary/").status_code == 401


# --- positions --------------------------------------------------------------------------------


def test_it_lists_open_positions_with_greeks_stop_target_and_ttl(trader, demo_market):
    [position] = open_positions(1)
    opened = timezone.now() - dt.timedelta(seconds=100)
    Position.objects.filter(pk=position.pk).update(
        delta=0.52,
        gamma=0.001,
        theta=-12.5,
        vega=8.1,
        stop_price=Decimal("75.05"),
        target_price=Decimal("140.00"),
        opened_at=opened,
        ttl_seconds=600,
    )
    response = client_for(trader).get(V1 + "positions/")
    assert response.status_code == 200
    [row] = response.json()["results"]
    assert row["id"] == position.pk and row["net_quantity"] == position.net_quantity
    assert row["instrument"] == position.instrument.display
    assert (row["delta"], row["stop_price"], row["target_price"]) == (0.52, "75.05", "140.00")
    assert row["ttl_seconds"] == 600 and 490 <= row["ttl_remaining_s"] <= 500
    assert isinstance(row["average_price"], str)


def test_it_does_not_list_flat_positions(trader, demo_market):
    [position] = open_positions(1)
    Position.objects.filter(pk=position.pk).update(net_quantity=0)
    assert client_for(trader).get(V1 + "positions/").json()["count"] == 0


def test_compliance_may_not_exit_a_position(compliance_user, demo_market):
    [position] = open_positions(1)
    response = client_for(compliance_user).post(V1 + f"positions/{position.pk}/exit/")
    assert response.status_code == 403
    assert not Order.objects.filter(purpose=Order.Purpose.EXIT).exists()


def test_exiting_an_unknown_position_is_404(trader):
    assert client_for(trader).post(V1 + "positions/999999/exit/").status_code == 404


def test_a_second_exit_is_refused_while_one_is_being_worked(trader, demo_market):
    from trading.orders.requests import submit

    [position] = open_positions(1)
    submit("EXIT", account="default", actor="user:trader1", position_id=position.pk)  # pending for the engine
    response = client_for(trader).post(V1 + f"positions/{position.pk}/exit/")
    assert response.status_code == 409
    assert "already being worked" in response.json()["detail"]
    assert not Order.objects.filter(purpose=Order.Purpose.EXIT).exists()


@pytest.mark.django_db(transaction=True)
def test_an_exit_is_allowed_while_halted(trader, demo_market):
    # Exits only reduce exposure: HALTED refuses new exposure, never a way out.
    [position] = open_positions(1)
    set_trading_state(TradingState.State.HALTED, actor="risk1", reason="test")
    response = client_for(trader).post(V1 + f"positions/{position.pk}/exit/")
    assert response.status_code == 200 and response.json()["flat"] is True, response.content
    assert Position.objects.get(pk=position.pk).net_quantity == 0


def test_a_flat_position_cannot_be_exited(trader, demo_market):
    [position] = open_positions(1)
    Position.objects.filter(pk=position.pk).update(net_quantity=0)
    assert client_for(trader).post(V1 + f"positions/{position.pk}/exit/").status_code == 409


# --- orders and trades ---------------------------------------------------------------------


def test_it_lists_orders_filtered_by_state_and_date(trader, demo_market):
    open_positions(2)
    client = client_for(trader)
    today = timezone.now().astimezone(IST).date()
    data = client.get(V1 + "orders/", {"state": "FILLED", "date": today.isoformat()}).json()
    assert data["count"] == 2 and {o["state"] for o in data["results"]} == {"FILLED"}
    assert client.get(V1 + "orders/", {"state": "OPEN"}).json()["count"] == 0
    yesterday = (today - dt.timedelta(days=1)).isoformat()
    assert client.get(V1 + "orders/", {"date": yesterday}).json()["count"] == 0
    page = client.get(V1 + "orders/", {"page_size": 1}).json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next"]


@pytest.mark.parametrize(("params", "field"), [({"state": "LOST"}, "state"), ({"date": "2026-13-45"}, "date")])
def test_it_refuses_bad_order_filters_naming_the_field(trader, params, field):
    response = client_for(trader).get(V1 + "orders/", params)
    assert response.status_code == 400
    assert field in response.json()


@pytest.mark.django_db(transaction=True)
def test_it_lists_trades(trader, demo_market):
    [position] = open_positions(1)
    client = client_for(trader)
    assert client.get(V1 + "trades/").json()["count"] == 0
    assert client.post(V1 + f"positions/{position.pk}/exit/").json()["flat"] is True
    [trade] = client.get(V1 + "trades/").json()["results"]
    assert trade["instrument"] == position.instrument.display and trade["direction"] == "LONG"
    assert Decimal(trade["net_pnl"]) == Decimal(trade["gross_pnl"]) - Decimal(trade["charges"])
    assert Decimal(trade["exit_price"]) > 0


def test_orders_need_a_role(make_user):
    assert client_for(make_user("nobody")).get(V1 + "orders/").status_code == 403


# --- strategies ----------------------------------------------------------------------------


def test_it_lists_strategies(trader):
    [row] = client_for(trader).get(V1 + "strategies/").json()
    assert row["key"] == "vol_oi" and row["enabled"] is False


def test_a_risk_manager_toggles_a_strategy_with_an_audit_record_and_a_new_version(risk_manager):
    strategy = Strategy.objects.get(key="vol_oi")
    client = client_for(risk_manager)
    response = client.post(V1 + f"strategies/{strategy.pk}/toggle/")
    assert response.status_code == 200
    assert response.json()["changed"] is True and response.json()["strategy"]["enabled"] is True
    strategy.refresh_from_db()
    assert strategy.enabled and strategy.version == 2
    record = AuditRecord.objects.filter(action="strategy.enabled").latest("seq")
    assert record.actor == "user:risk1" and record.subject == "strategy:vol_oi"
    # Asking for the state it already has changes nothing.
    response = client.post(V1 + f"strategies/{strategy.pk}/toggle/", {"enabled": True}, format="json")
    assert response.json()["changed"] is False and Strategy.objects.get(pk=strategy.pk).version == 2
    response = client.post(V1 + f"strategies/{strategy.pk}/toggle/", {"enabled": False}, format="json")
    assert response.json()["strategy"]["enabled"] is False


def test_a_trader_may_not_toggle_a_strategy(trader):
    strategy = Strategy.objects.get(key="vol_oi")
    assert client_for(trader).post(V1 + f"strategies/{strategy.pk}/toggle/").status_code == 403
    assert Strategy.objects.get(pk=strategy.pk).version == strategy.version


def test_a_toggle_with_a_bad_value_is_refused(risk_manager):
    strategy = Strategy.objects.get(key="vol_oi")
    response = client_for(risk_manager).post(
        V1 + f"strategies/{strategy.pk}/toggle/", {"enabled": "perhaps"}, format="json"
    )
    assert response.status_code == 400 and "enabled" in response.json()


# --- risk limits and state ---------------------------------------------------------------------


def test_every_role_reads_the_limits(trader, compliance_user):
    for user in (trader, compliance_user):
        data = client_for(user).get(V1 + "risk/limits/").json()
        assert data["daily_loss_cap"] == "25000.00" and data["order_rate_per_s"] == 9


def test_a_risk_manager_changes_the_limits_through_the_audited_service(risk_manager):
    response = client_for(risk_manager).patch(V1 + "risk/limits/", {"daily_loss_cap": "30000"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["daily_loss_cap"] == "30000.00" and response.json()["version"] == 2
    limits = RiskLimits.active()
    assert limits.daily_loss_cap == Decimal("30000") and limits.updated_by == "user:risk1"
    record = AuditRecord.objects.filter(action="risk_limits.changed").latest("seq")
    assert record.payload["changes"]["daily_loss_cap"] == {"old": "25000.00", "new": "30000.00"}


def test_a_full_put_replaces_the_limits(risk_manager):
    client = client_for(risk_manager)
    data = client.get(V1 + "risk/limits/").json()
    data.update(max_lots_per_signal=5, max_lots_per_strategy=40)
    response = client.put(V1 + "risk/limits/", data, format="json")
    assert response.status_code == 200, response.content
    assert (RiskLimits.active().max_lots_per_signal, RiskLimits.active().max_lots_per_strategy) == (5, 40)


def test_a_trader_may_not_change_the_limits(trader):
    response = client_for(trader).patch(V1 + "risk/limits/", {"daily_loss_cap": "1"}, format="json")
    assert response.status_code == 403
    assert RiskLimits.active().daily_loss_cap == Decimal("25000")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"daily_loss_cap": "lots"}, "daily_loss_cap"),
        ({"daily_loss_cap": "0"}, "daily_loss_cap"),
        ({"max_lots_per_signal": 60}, "max_lots_per_signal"),
        ({"order_rate_per_s": 20}, "order_rate_per_s"),
        ({"registered_algo": True, "algo_id": ""}, "algo_id"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(risk_manager, changes, field):
    before = AuditRecord.objects.count()
    response = client_for(risk_manager).patch(V1 + "risk/limits/", changes, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert AuditRecord.objects.count() == before and RiskLimits.active().version == 1


def test_the_risk_state_reports_the_trading_state_and_breakers(trader):
    from risk.breakers import trip

    set_trading_state(TradingState.State.REDUCING, actor="risk1", reason="drill")
    trip("vix", "India VIX jumped", at=timezone.now())
    data = client_for(trader).get(V1 + "risk/state/").json()
    assert data["trading_state"]["state"] == "REDUCING"
    assert [b["breaker"] for b in data["open_breakers"]] == ["vix"]
    assert data["open_reconciliation_breaks"] == 0 and data["limits_version"] == 1


def test_the_risk_state_needs_a_login():
    assert APIClient().get(V1 + "risk/state/").status_code == 401


def test_compliance_may_not_kill_all(compliance_user):
    assert client_for(compliance_user).post(V1 + "risk/kill-all/").status_code == 403
    assert TradingState.objects.filter(state=TradingState.State.HALTED).count() == 0


def test_kill_all_refuses_a_blank_reason(trader):
    response = client_for(trader).post(V1 + "risk/kill-all/", {"reason": "  "}, format="json")
    assert response.status_code == 400 and "reason" in response.json()


# --- audit export --------------------------------------------------------------------------------


def test_compliance_exports_the_audit_chain_like_the_compliance_page(compliance_user):
    set_trading_state(TradingState.State.REDUCING, actor="risk1", reason="for the export")
    client = client_for(compliance_user)
    today = RealClock().today().isoformat()
    api = client.get(V1 + "audit/export/", {"from": today, "to": today, "format": "jsonl"})
    assert api.status_code == 200 and api["Content-Type"] == "application/x-ndjson"
    api_body = b"".join(api.streaming_content)
    assert b'"action":"trading_state.changed"' in api_body
    client.force_login(compliance_user)
    page = client.get("/compliance/export/", {"from": today, "to": today, "format": "jsonl"})
    assert b"".join(page.streaming_content) == api_body
    csv = client_for(compliance_user).get(V1 + "audit/export/")
    assert csv["Content-Type"] == "text/csv"
    assert b"".join(csv.streaming_content).startswith(b"seq,created_at,actor,action,subject,payload")


def test_a_trader_may_not_export_the_audit_chain(trader):
    assert client_for(trader).get(V1 + "audit/export/").status_code == 403


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "xml"}, "format"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-12-02", "to": "2026-12-01"}, "to"),
    ],
)
def test_bad_export_parameters_are_refused_naming_the_field(compliance_user, params, field):
    response = client_for(compliance_user).get(V1 + "audit/export/", params)
    assert response.status_code == 400
    assert field in response.json()


# --- health ------------------------------------------------------------------------------------


def test_live_needs_no_login():
    response = APIClient().get("/health/live")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_ready_is_200_with_a_fresh_engine_and_feed():
    beat(age_s=1)
    response = APIClient().get("/health/ready")
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["status"] == "ok" and data["failed"] == []
    assert {k: v["ok"] for k, v in data["checks"].items()} == {
        "database": True,
        "channel_layer": True,
        "engine": True,
        "feed": True,
    }


@override_settings(HEALTH_ENGINE_STALE_S=5)
def test_ready_is_503_when_the_heartbeat_is_stale():
    beat(age_s=30)
    response = APIClient().get("/health/ready")
    assert response.status_code == 503
    data = response.json()
    assert set(data["failed"]) == {"engine", "feed"}
    assert data["checks"]["engine"]["age_s"] >= 30 and data["checks"]["engine"]["max_age_s"] == 5


def test_ready_is_503_without_an_engine_or_with_a_stopped_one():
    assert APIClient().get("/health/ready").status_code == 503
    beat(role=EngineHeartbeat.Role.STOPPED)
    response = APIClient().get("/health/ready")
    assert response.status_code == 503 and "engine" in response.json()["failed"]


def test_ready_is_503_when_the_feed_is_stale():
    beat(stale_feed=True)
    response = APIClient().get("/health/ready")
    assert response.status_code == 503 and response.json()["failed"] == ["feed"]


@override_settings(
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://:s3cret@127.0.0.1:6399/0"]},
        }
    }
)
def test_ready_names_a_dead_channel_layer_without_leaking_its_url():
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    beat()
    try:
        response = APIClient().get("/health/ready")
    finally:
        channel_layers.backends.clear()
    assert response.status_code == 503 and response.json()["failed"] == ["channel_layer"]
    assert b"s3cret" not in response.content and b"6399" not in response.content


# --- through the broker (the OMS runs in another thread: committed data) -------------------------


@pytest.mark.django_db(transaction=True)
def test_an_exit_with_no_engine_is_sent_through_the_broker_at_once(trader, demo_market):
    from trading.models import PaperPosition

    [position] = open_positions(1)
    response = client_for(trader, token=True).post(V1 + f"positions/{position.pk}/exit/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["worked_by"].startswith("standalone:") and body["flat"] is True and body["errors"] == []
    assert (body["sent"], body["filled"], body["rejected"], body["still_open"]) == (1, 1, 0, [])
    assert Position.objects.get(pk=position.pk).net_quantity == 0
    assert not PaperPosition.objects.exclude(net_quantity=0).exists()
    [exit_order] = Order.objects.filter(purpose=Order.Purpose.EXIT)
    assert AuditRecord.objects.filter(action="order.filled", subject=f"order:{exit_order.client_order_id}").exists()


@pytest.mark.django_db(transaction=True)
def test_kill_all_flattens_and_returns_its_summary(trader, demo_market):
    open_positions(2)
    response = client_for(trader).post(V1 + "risk/kill-all/", {"reason": "desk drill", "timeout_s": 20}, format="json")
    assert response.status_code == 200, response.content
    summary = response.json()
    assert summary["legs"] == 2 and summary["flat"] is True and summary["errors"] == []
    assert not Position.objects.exclude(net_quantity=0).exists()
    assert TradingState.objects.get(account="default").state == TradingState.State.HALTED
    started = AuditRecord.objects.get(action="kill_all.started")
    assert started.actor == "user:trader1" and started.payload == {"reason": "desk drill"}


# --- the schema's promises (what a schema fuzz found) ---------------------------------------


def test_times_of_day_carry_their_offset_and_are_accepted_back(risk_manager):
    client = client_for(risk_manager)
    body = client.get(f"{V1}risk/limits/").json()
    assert body["entry_cutoff"] == "15:00:00+05:30"
    body = {k: v for k, v in body.items() if k not in ("id", "version", "updated_at", "updated_by")}
    body["entry_cutoff"] = "09:00:00+00:00"  # 14:30 IST
    response = client.put(f"{V1}risk/limits/", body, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["entry_cutoff"] == "14:30:00+05:30"


def test_put_on_the_limits_needs_every_field_and_refuses_unknown_ones(risk_manager):
    client = client_for(risk_manager)
    before = RiskLimits.active().version
    empty = client.put(f"{V1}risk/limits/", {}, format="json")
    assert empty.status_code == 400 and empty["Content-Type"].startswith("application/json")
    partial = client.put(f"{V1}risk/limits/", {"daily_loss_cap": "1000.00"}, format="json")
    assert partial.status_code == 400 and "max_lots_per_signal" in partial.json()
    unknown = client.patch(f"{V1}risk/limits/", {"daily_loss_cap": "1000.00", "bogus": 1}, format="json")
    assert unknown.status_code == 400 and unknown.json() == {"bogus": ["Unknown field."]}
    assert RiskLimits.active().version == before


def test_page_size_must_be_a_whole_number(trader):
    client = client_for(trader)
    for bad in ("null", "abc", "0", "501", "-1"):
        response = client.get(f"{V1}orders/", {"page_size": bad})
        assert response.status_code == 400, bad
        assert "page_size" in response.json()
    assert client.get(f"{V1}orders/", {"page_size": "5"}).status_code == 200


def test_a_toggle_takes_json_only_and_moves_updated_at(risk_manager):
    strategy = Strategy.objects.create(key="probe", name="Probe", enabled=False)
    before = Strategy.objects.get(pk=strategy.pk).updated_at
    client = client_for(risk_manager)
    garbage = client.post(f"{V1}strategies/{strategy.pk}/toggle/", {"x": "y"}, format="multipart")
    assert garbage.status_code == 415 and "detail" in garbage.json()
    assert client.post(f"{V1}strategies/{strategy.pk}/toggle/", {"enabled": None}, format="json").status_code == 400
    assert client.post(f"{V1}strategies/{strategy.pk}/toggle/", {"on": True}, format="json").status_code == 400
    flipped = client.post(f"{V1}strategies/{strategy.pk}/toggle/")
    assert flipped.status_code == 200 and flipped.json()["strategy"]["enabled"] is True
    assert Strategy.objects.get(pk=strategy.pk).updated_at > before
    assert AuditRecord.objects.filter(action="strategy.enabled", actor="user:risk1").exists()


def test_no_html_error_page_anywhere_under_api(trader):
    client = client_for(trader)
    for path in (f"{V1}positions/abc/exit/", f"{V1}strategies/x/toggle/", f"{V1}nothing/", "/api/v2/", f"{V1}orders"):
        response = client.post(path) if "exit" in path or "toggle" in path else client.get(path)
        assert response.status_code == 404, path
        assert response["Content-Type"] == "application/json" and response.json() == {"detail": "Not found."}


def test_the_summary_gives_money_in_two_decimals_and_times_in_ist(trader, demo_market):
    from trading.models import Trade

    inst = Instrument.objects.filter(kind="CE").first()
    now = timezone.now()
    Trade.objects.create(
        instrument=inst,
        direction="LONG",
        quantity=65,
        entry_price=Decimal("100"),
        exit_price=Decimal("110"),
        opened_at=now - dt.timedelta(minutes=5),
        closed_at=now,
        gross_pnl=Decimal("650"),
        charges=Decimal("41.39"),
        net_pnl=Decimal("608.61"),
    )
    body = client_for(trader).get(f"{V1}summary/").json()
    assert body["charges"] == "41.39" and body["net_pnl"] == "608.61"
    assert all(t.endswith("+05:30") for t, _ in body["equity"])
    assert all(v.count(".") == 1 and len(v.split(".")[1]) == 2 for _, v in body["equity"])
