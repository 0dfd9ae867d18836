from __future__ import annotations

import pytest
from django.urls import reverse

from quanthub.roles import COMPLIANCE, RISK_MANAGER, ROLES, TRADER, has_role, roles_of
from risk.models import RiskLimits

pytestmark = pytest.mark.django_db


def test_the_roles_exist_after_migrations():
    from django.contrib.auth.models import Group

    assert set(Group.objects.filter(name__in=ROLES).values_list("name", flat=True)) == set(ROLES)


def test_every_role_can_view_orders_and_risk_limits(make_user):
    for role in ROLES:
        user = make_user(f"u-{role}", role)
        assert user.has_perm("trading.view_order")
        assert user.has_perm("risk.view_risklimits")
        assert user.has_perm("audit.view_auditrecord")


def test_a_trader_can_kill_all_but_cannot_change_risk_limits(trader):
    assert trader.has_perm("trading.kill_all")
    assert trader.has_perm("trading.exit_position")
    assert not trader.has_perm("risk.change_risklimits")
    assert not trader.has_perm("trading.toggle_strategy")


def test_a_risk_manager_changes_limits_and_toggles_strategies(risk_manager):
    assert risk_manager.has_perm("risk.change_risklimits")
    assert risk_manager.has_perm("trading.toggle_strategy")
    assert risk_manager.has_perm("trading.kill_all")
    assert not risk_manager.has_perm("audit.export_audit")


def test_compliance_can_export_but_change_nothing(compliance_user):
    assert compliance_user.has_perm("audit.export_audit")
    assert compliance_user.has_perm("audit.verify_audit")
    changing = [
        perm
        for perm in compliance_user.get_all_permissions()
        if perm.split(".", 1)[1].startswith(("add_", "change_", "delete_"))
    ]
    assert changing == []
    assert not compliance_user.has_perm("trading.kill_all")


def test_roles_of_reports_group_membership(trader, compliance_user):
    assert roles_of(trader) == frozenset({TRADER})
    assert has_role(compliance_user, COMPLIANCE)
    assert not has_role(compliance_user, RISK_MANAGER, TRADER)


def test_a_trader_gets_403_on_the_risk_limits_change_form(client, trader):
    limits = RiskLimits.objects.get(is_active=True)
    client.force_login(trader)
    url = reverse("admin:risk_risklimits_change", args=[limits.pk])
    assert client.get(url).status_code == 200  # view permission: read-only page
    response = client.post(url, {"name": "hacked", "daily_loss_cap": "999999"})
    assert response.status_code == 403
    limits.refresh_from_db()
    assert limits.daily_loss_cap == 25000


def test_compliance_cannot_change_a_strategy_in_the_admin(client, compliance_user):
    from trading.models import Strategy

    strategy = Strategy.objects.get(key="vol_oi")
    client.force_login(compliance_user)
    response = client.post(reverse("admin:trading_strategy_change", args=[strategy.pk]), {"enabled": "on"})
    assert response.status_code == 403
    strategy.refresh_from_db()
    assert strategy.enabled is False


def test_the_audit_admin_is_read_only_even_for_superusers(admin_client):
    from audit.chain import append

    record = append("test.event", actor="tester", subject="x", payload={"a": 1})
    assert admin_client.get(reverse("admin:audit_auditrecord_change", args=[record.pk])).status_code == 200
    assert admin_client.get(reverse("admin:audit_auditrecord_add")).status_code == 403
    assert (
        admin_client.post(reverse("admin:audit_auditrecord_delete", args=[record.pk]), {"post": "yes"}).status_code
        == 403
    )


def test_seed_demo_creates_one_user_per_role_with_printed_passwords(db, capsys):
    from django.contrib.auth import authenticate
    from django.core.management import call_command
    from django.test import RequestFactory

    call_command("seed_demo", "--no-instruments")
    out = capsys.readouterr().out
    logins = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-2] in {"trader", "risk", "compliance"}:
            logins[parts[-2]] = parts[-1]
    assert set(logins) == {"trader", "risk", "compliance"}
    for username, password in logins.items():
        user = authenticate(RequestFactory().post("/login/"), username=username, password=password)
        assert user is not None and user.is_staff
    assert len(set(logins.values())) == 3

    call_command("seed_demo", "--no-instruments")
    assert "(unchanged" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        (TRADER, {"Orders", "Fills", "Positions", "Trades", "Risk limits"}),
        (COMPLIANCE, {"Audit records", "Orders", "Fills", "Trades"}),
    ],
)
def test_the_admin_shows_each_role_the_models_of_the_readme(client, make_user, role, expected):
    import re

    user = make_user(f"admin-{role}", role)
    user.is_staff = True
    user.save()
    client.force_login(user)
    html = client.get(reverse("admin:index")).content.decode()
    shown = set(re.findall(r"<th scope=\"row\"[^>]*>\s*<a href=\"[^\"]+\">([^<]+)</a>", html))
    assert shown == expected
    # A model outside the role's list is refused by URL too.
    assert client.get(reverse("admin:trading_strategy_changelist")).status_code == 403


def test_a_risk_manager_sees_what_they_manage_in_the_admin(client, risk_manager):
    risk_manager.is_staff = True
    risk_manager.save()
    client.force_login(risk_manager)
    html = client.get(reverse("admin:index")).content.decode()
    for name in ("Strategies", "Risk limits", "Trading states", "Event days", "Reconciliation breaks"):
        assert name in html
    assert "Audit records" not in html
    assert client.get(reverse("admin:trading_strategy_changelist")).status_code == 200
