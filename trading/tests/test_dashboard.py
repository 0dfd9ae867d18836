from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditRecord
from trading.alerts import raise_alert
from trading.models import Alert, Strategy

PAGES = [
    "dashboard",
    "trading:positions",
    "trading:strategies",
    "trading:chain",
    "trading:analytics",
    "trading:alerts",
]


@pytest.mark.django_db
@pytest.mark.parametrize("name", PAGES)
def test_it_sends_anonymous_visitors_to_the_login_page(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.django_db
@pytest.mark.parametrize("name", PAGES)
def test_it_refuses_a_user_without_a_role(client, make_user, name):
    client.force_login(make_user("nobody"))
    assert client.get(reverse(name)).status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_its_live_panels_for_a_trader(client, trader, demo_market, name):
    client.force_login(trader)
    response = client.get(reverse(name))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'ws-connect="/ws/dashboard/?panels=' in html
    if name in ("dashboard", "trading:positions"):
        assert 'id="kill-all-button"' in html  # the trader may press Kill All
    assert 'id="panel-' in html


@pytest.mark.django_db
def test_the_overview_shows_every_panel(client, trader, demo_market):
    client.force_login(trader)
    html = client.get(reverse("dashboard")).content.decode()
    for panel in ("overview", "killall", "risk", "positions", "scorecards", "alerts"):
        assert f'id="panel-{panel}"' in html
    assert "Hold 2 s to Kill All" in html


@pytest.mark.django_db
def test_compliance_sees_the_dashboards_without_trading_controls(client, compliance_user):
    client.force_login(compliance_user)
    html = client.get(reverse("dashboard")).content.decode()
    # Controls compliance may not use are not rendered at all (not merely hidden).
    assert 'id="kill-all-button"' not in html and "Hold 2 s to Kill All" not in html
    assert reverse("trading:kill_all") not in html and "Acknowledge</button>" not in html
    assert reverse("audit:compliance") in html  # the nav leads to the compliance page
    assert client.post(reverse("trading:kill_all"), HTTP_HX_REQUEST="true").status_code == 403


@pytest.mark.django_db
def test_an_htmx_panel_request_gets_only_the_partial(client, trader):
    client.force_login(trader)
    response = client.get(reverse("trading:panel", args=["risk"]), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section class="card panel" id="panel-risk">')
    assert "<html" not in html
    assert client.get(reverse("trading:panel", args=["nope"])).status_code == 404
    assert client.get(reverse("trading:panel", args=["chain"]) + "?underlying=XYZ").status_code == 400


@pytest.mark.django_db
def test_an_htmx_post_without_the_csrf_header_is_refused(trader):
    client = Client(enforce_csrf_checks=True)
    client.force_login(trader)
    alert = raise_alert("WARNING", "risk", "Margin at 35 %")
    response = client.post(reverse("trading:ack_alert", args=[alert.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 403
    assert Alert.objects.get(pk=alert.pk).acknowledged_at is None
    # The same request with the header htmx sends (hx-headers on <body>) goes through.
    client.get(reverse("dashboard"))
    token = client.cookies["csrftoken"].value
    response = client.post(
        reverse("trading:ack_alert", args=[alert.pk]), HTTP_HX_REQUEST="true", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 200


@pytest.mark.django_db
def test_a_trader_acknowledges_an_alert_once_and_it_is_audited(client, trader):
    alert = raise_alert("CRITICAL", "feed", "Chain stale for 12 s", "NIFTY chain not updated")
    client.force_login(trader)
    html = client.get(reverse("trading:alerts")).content.decode()
    assert "Chain stale for 12 s" in html
    response = client.post(reverse("trading:ack_alert", args=[alert.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "Chain stale" not in response.content.decode()
    alert.refresh_from_db()
    assert alert.acknowledged_by == "trader1" and alert.acknowledged_at is not None
    client.post(reverse("trading:ack_alert", args=[alert.pk]), HTTP_HX_REQUEST="true")
    assert AuditRecord.objects.filter(action="alert.acknowledged").count() == 1
    assert client.post(reverse("trading:ack_alert", args=[999999])).status_code == 404


@pytest.mark.django_db
def test_only_a_risk_manager_switches_a_strategy_and_the_engine_sees_a_new_version(client, trader, risk_manager):
    strategy = Strategy.objects.get(key="vol_oi")
    version, enabled = strategy.version, strategy.enabled
    client.force_login(trader)
    assert client.post(reverse("trading:toggle_strategy", args=[strategy.pk])).status_code == 403
    client.force_login(risk_manager)
    html = client.post(reverse("trading:toggle_strategy", args=[strategy.pk])).content.decode()
    strategy.refresh_from_db()
    assert strategy.enabled is not enabled and strategy.version == version + 1
    assert ("Enable" if enabled else "Disable") in html
    # The same action as the API's and the admin's switch, under the user's actor.
    action = "strategy.disabled" if enabled else "strategy.enabled"
    assert AuditRecord.objects.filter(action=action, subject="strategy:vol_oi", actor="user:risk1").exists()


@pytest.mark.django_db
def test_get_is_refused_on_actions(client, trader):
    client.force_login(trader)
    assert client.get(reverse("trading:kill_all")).status_code == 405
