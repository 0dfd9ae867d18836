from __future__ import annotations

from django.urls import path

from trading import views, views_backtest

app_name = "trading"

urlpatterns = [
    path("positions/", views.positions, name="positions"),
    path("positions/<int:pk>/exit/", views.exit_position, name="exit_position"),
    path("strategies/", views.strategies, name="strategies"),
    path("strategies/<int:pk>/toggle/", views.toggle_strategy, name="toggle_strategy"),
    path("chain/", views.chain, name="chain"),
    path("analytics/", views.analytics, name="analytics"),
    path("alerts/", views.alerts, name="alerts"),
    path("alerts/<int:pk>/ack/", views.acknowledge_alert, name="ack_alert"),
    path("kill-all/", views.kill_all, name="kill_all"),
    path("preflight/", views.preflight, name="preflight"),
    path("panels/<slug:name>/", views.panel, name="panel"),
    path("backtests/", views_backtest.backtest_list, name="backtests"),
    path("backtests/start/", views_backtest.backtest_start, name="backtest_start"),
    path("backtests/compare/", views_backtest.backtest_compare, name="backtest_compare"),
    path("backtests/<int:pk>/", views_backtest.backtest_detail, name="backtest_detail"),
    path("backtests/<int:pk>/cancel/", views_backtest.backtest_cancel, name="backtest_cancel"),
]
