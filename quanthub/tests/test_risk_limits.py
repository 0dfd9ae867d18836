from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from audit.models import AuditRecord
from risk.models import RiskLimits
from risk.services import save_risk_limits, set_trading_state

pytestmark = pytest.mark.django_db


def test_the_product_defaults_are_active_after_migrations():
    limits = RiskLimits.active()
    assert limits.pk is not None
    assert limits.daily_loss_cap == Decimal("25000")
    assert limits.margin_utilisation_cap_pct == Decimal("40")
    assert (limits.max_lots_per_signal, limits.max_lots_per_strategy) == (10, 50)
    assert limits.max_slippage_per_leg == Decimal("0.30")
    assert limits.order_rate_per_s == 9
    assert limits.max_modifications_per_order == 20


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"daily_loss_cap": Decimal("0")}, "daily_loss_cap"),
        ({"daily_loss_cap": Decimal("-5")}, "daily_loss_cap"),
        ({"margin_utilisation_cap_pct": Decimal("140")}, "margin_utilisation_cap_pct"),
        ({"max_lots_per_signal": 60, "max_lots_per_strategy": 50}, "max_lots_per_signal"),
        ({"order_rate_per_s": 20}, "order_rate_per_s"),
        ({"registered_algo": True, "algo_id": ""}, "algo_id"),
        ({"max_modifications_per_order": 25}, "max_modifications_per_order"),
        ({"max_slippage_per_leg": Decimal("0")}, "max_slippage_per_leg"),
    ],
)
def test_it_refuses_invalid_limits_naming_the_field(changes, field):
    limits = RiskLimits.active()
    for key, value in changes.items():
        setattr(limits, key, value)
    before = AuditRecord.objects.count()
    with pytest.raises(ValidationError) as excinfo:
        save_risk_limits(limits, actor="risk1")
    assert field in excinfo.value.message_dict
    assert AuditRecord.objects.count() == before
    assert RiskLimits.objects.get(pk=limits.pk).version == 1


def test_a_registered_algo_may_exceed_nine_orders_per_second():
    limits = RiskLimits.active()
    limits.order_rate_per_s = 20
    limits.registered_algo = True
    limits.algo_id = "NSE-ALGO-123"
    save_risk_limits(limits, actor="risk1")
    assert RiskLimits.active().order_rate_per_s == 20


def test_a_change_is_audited_with_actor_and_old_and_new_values():
    limits = RiskLimits.active()
    limits.daily_loss_cap = Decimal("20000")
    save_risk_limits(limits, actor="risk1")
    record = AuditRecord.objects.filter(action="risk_limits.changed").last()
    assert record.actor == "risk1"
    assert record.payload["changes"] == {"daily_loss_cap": {"old": "25000.00", "new": "20000"}}
    assert record.payload["version"] == 2
    assert RiskLimits.active().version == 2


def test_activating_a_new_set_deactivates_the_old_one():
    old = RiskLimits.active()
    new = RiskLimits(name="Expiry day", is_active=True, max_lots_per_signal=5)
    save_risk_limits(new, actor="risk1")
    old.refresh_from_db()
    assert old.is_active is False
    assert RiskLimits.active().pk == new.pk


def _change_form(client, user):
    """The active limits' admin change URL and its current values as POST data."""
    limits = RiskLimits.active()
    client.force_login(user)
    url = reverse("admin:risk_risklimits_change", args=[limits.pk])
    form = client.get(url).context["adminform"].form
    data = {name: ("" if value is None else value) for name, value in form.initial.items()}
    return url, {k: v for k, v in data.items() if not isinstance(v, bool) or v}


def test_a_risk_manager_edits_limits_in_the_admin_and_it_is_audited(client, risk_manager):
    url, data = _change_form(client, risk_manager)
    data.update({"max_lots_per_signal": "8", "entry_cutoff": "15:00:00"})
    response = client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    assert RiskLimits.active().max_lots_per_signal == 8
    record = AuditRecord.objects.filter(action="risk_limits.changed").last()
    assert record.actor == f"user:{risk_manager.username}"
    assert record.payload["changes"]["max_lots_per_signal"] == {"old": 10, "new": 8}


def test_a_wrong_form_value_is_refused_with_a_field_error(client, risk_manager):
    url, data = _change_form(client, risk_manager)
    data.update({"max_lots_per_signal": "80", "entry_cutoff": "15:00:00"})
    response = client.post(url, data)
    assert response.status_code == 200
    assert "Lots per signal cannot exceed lots per strategy." in response.content.decode()
    assert RiskLimits.active().max_lots_per_signal == 10


def test_trading_state_changes_are_conditional_and_audited():
    assert set_trading_state("HALTED", actor="risk1", reason="manual halt")
    assert not set_trading_state("HALTED", actor="risk1", reason="again")
    assert not set_trading_state("ACTIVE", actor="bot", reason="stale read", expected="REDUCING")
    record = AuditRecord.objects.filter(action="trading_state.changed").last()
    assert record.payload["old"] == "ACTIVE" and record.payload["new"] == "HALTED"
    with pytest.raises(ValueError, match="needs a reason"):
        set_trading_state("ACTIVE", actor="risk1", reason="  ")
