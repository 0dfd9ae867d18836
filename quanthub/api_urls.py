"""/api/v1/: the REST API (docs/api.md)."""

from __future__ import annotations

from django.urls import path

from audit import api as audit_api
from risk import api as risk_api
from trading import api as trading_api

app_name = "api"

urlpatterns = [
    path("summary/", trading_api.SummaryView.as_view(), name="summary"),
    path("positions/", trading_api.PositionList.as_view(), name="positions"),
    path("positions/<int:pk>/exit/", trading_api.PositionExit.as_view(), name="position-exit"),
    path("orders/", trading_api.OrderList.as_view(), name="orders"),
    path("trades/", trading_api.TradeList.as_view(), name="trades"),
    path("strategies/", trading_api.StrategyList.as_view(), name="strategies"),
    path("strategies/<int:pk>/toggle/", trading_api.StrategyToggle.as_view(), name="strategy-toggle"),
    path("risk/limits/", risk_api.RiskLimitsView.as_view(), name="risk-limits"),
    path("risk/state/", risk_api.RiskStateView.as_view(), name="risk-state"),
    path("risk/kill-all/", trading_api.KillAllView.as_view(), name="kill-all"),
    path("audit/export/", audit_api.AuditExportView.as_view(), name="audit-export"),
]
