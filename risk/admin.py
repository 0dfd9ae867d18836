from __future__ import annotations

from django.contrib import admin

from risk import services
from risk.models import BreakerTrip, ChargeRate, EventDay, GateRefusal, RiskLimits, TradingState
from trading.timeline import account_now


@admin.register(RiskLimits)
class RiskLimitsAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "version",
        "is_active",
        "daily_loss_cap",
        "margin_utilisation_cap_pct",
        "max_lots_per_signal",
        "max_lots_per_strategy",
        "order_rate_per_s",
        "updated_by",
        "updated_at",
    )
    readonly_fields = ("version", "updated_by", "updated_at")
    actions = ("activate",)
    fieldsets = (
        (None, {"fields": ("name", "is_active", "version", "updated_by", "updated_at")}),
        ("Loss and margin", {"fields": ("daily_loss_cap", "margin_utilisation_cap_pct")}),
        (
            "Position size",
            {
                "fields": (
                    "max_lots_per_signal",
                    "max_lots_per_strategy",
                    "max_hedge_lots_per_signal",
                    "hedge_margin_cap_pct",
                )
            },
        ),
        (
            "Execution quality",
            {
                "fields": (
                    "max_slippage_per_leg",
                    "max_spread_pct_of_mid",
                    "max_requotes",
                    "max_requote_chase",
                    "partial_fill_min_pct",
                    "partial_fill_wait_ms",
                    "max_modifications_per_order",
                )
            },
        ),
        ("Order rate", {"fields": ("order_rate_per_s", "registered_algo", "algo_id")}),
        (
            "Session and breakers",
            {
                "fields": (
                    "entry_cutoff",
                    "vix_breaker_sigma",
                    "vix_normalise_minutes",
                    "vix_change_window_s",
                    "vix_min_samples",
                    "feed_stale_chain_s",
                    "feed_stale_ltp_s",
                    "kill_all_target_s",
                )
            },
        ),
    )

    def save_model(self, request, obj, form, change):
        services.save_risk_limits(obj, actor=f"user:{request.user.get_username()}")

    def has_delete_permission(self, request, obj=None):
        # Limits are versioned, never deleted: deactivate instead.
        return False

    @admin.action(description="Activate the selected limits (deactivates the others)", permissions=["change"])
    def activate(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one set of limits to activate.", level="error")
            return
        limits = queryset.get()
        limits.is_active = True
        services.save_risk_limits(limits, actor=f"user:{request.user.get_username()}")
        self.message_user(request, f"{limits} is now active.")


@admin.register(TradingState)
class TradingStateAdmin(admin.ModelAdmin):
    list_display = ("account", "state", "actor", "reason", "changed_at", "halted_until")
    actions = ("kill_all",)

    @admin.action(description="Kill All: halt, cancel, exit every position, then the broker kill switch")
    def kill_all(self, request, queryset):
        from django.contrib import messages

        from quanthub.api import run_in_fresh_thread
        from trading.management.commands.kill_all import describe
        from trading.orders.requests import request_kill_all  # the one sender's hand-over, not the order path

        if not request.user.has_perm("trading.kill_all"):
            self.message_user(request, "You may not trigger Kill All.", messages.ERROR)
            return
        for state in queryset:
            result = run_in_fresh_thread(
                request_kill_all, f"user:{request.user.get_username()}", "Kill All from the admin", state.account
            )
            self.message_user(
                request,
                f"{state.account}: {describe(result)}; errors: {'; '.join(result.get('errors', [])) or 'none'}",
                messages.SUCCESS if result.get("flat") else messages.ERROR,
            )

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm("risk.change_tradingstate")

    readonly_fields = ("account", "actor", "changed_at", "halted_until")
    fields = ("account", "state", "reason", "actor", "changed_at", "halted_until")

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        services.set_trading_state(
            obj.state,
            actor=f"user:{request.user.get_username()}",
            reason=obj.reason or "changed in the admin",
            account=obj.account,
        )


@admin.register(EventDay)
class EventDayAdmin(admin.ModelAdmin):
    list_display = ("date", "kind", "action", "provisional", "note", "source")
    list_filter = ("kind", "action", "provisional")
    date_hierarchy = "date"


@admin.register(BreakerTrip)
class BreakerTripAdmin(admin.ModelAdmin):
    """Trips are cleared with the action, which records who and when itself (and an
    audit record); nobody types a name or a time."""

    list_display = ("breaker", "account", "tripped_at", "reason", "cleared_at", "cleared_by")
    list_filter = ("breaker", "account")
    readonly_fields = ("account", "breaker", "tripped_at", "reason", "details", "cleared_at", "cleared_by")
    date_hierarchy = "tripped_at"
    actions = ("clear_trips",)

    @admin.action(description="Clear the selected breakers (records you and the time, audited)")
    def clear_trips(self, request, queryset):
        from django.contrib import messages

        from risk.breakers import clear

        if not request.user.has_perm("risk.change_breakertrip"):
            self.message_user(request, "You may not clear breakers.", messages.ERROR)
            return
        cleared = 0
        for account, breaker in set(queryset.filter(cleared_at__isnull=True).values_list("account", "breaker")):
            cleared += clear(
                breaker, at=account_now(account), actor=f"user:{request.user.get_username()}", account=account
            )
        self.message_user(request, f"{cleared} breaker trip(s) cleared.", messages.SUCCESS)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ChargeRate)
class ChargeRateAdmin(admin.ModelAdmin):
    """Versioned rates: add a row with a new effective date rather than editing history."""

    list_display = (
        "instrument_kind",
        "effective_from",
        "brokerage_per_order",
        "stt_sell_pct",
        "exchange_txn_pct",
        "sebi_per_crore",
        "stamp_buy_pct",
        "gst_pct",
        "source",
    )
    list_filter = ("instrument_kind",)


@admin.register(GateRefusal)
class GateRefusalAdmin(admin.ModelAdmin):
    """Every intent the risk gate refused, with its rule and reason. Read-only."""

    list_display = ("refused_at", "rule", "reason", "strategy_key", "security_id", "side", "purpose", "requested_lots")
    list_filter = ("rule", "strategy_key", "purpose")
    search_fields = ("reason", "security_id", "signal_key")
    date_hierarchy = "refused_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
