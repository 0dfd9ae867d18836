from __future__ import annotations

from django.contrib import admin, messages

from trading import services
from trading.models import Fill, Order, Position, Signal, Strategy, Trade


@admin.register(Strategy)
class StrategyAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "enabled", "version", "updated_at")
    list_filter = ("enabled",)
    readonly_fields = ("version", "updated_at")
    fields = ("key", "name", "enabled", "params", "version", "updated_at")
    actions = ("enable_strategies", "disable_strategies")

    def save_model(self, request, obj, form, change):
        services.save_strategy(obj, actor=request.user.get_username(), changed=form.changed_data)

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields.append("key")
        if not request.user.has_perm("trading.toggle_strategy"):
            fields.append("enabled")
        return fields

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not request.user.has_perm("trading.toggle_strategy"):
            actions.pop("enable_strategies", None)
            actions.pop("disable_strategies", None)
        return actions

    @admin.action(description="Enable selected strategies")
    def enable_strategies(self, request, queryset):
        changed = sum(services.set_strategy_enabled(s, True, actor=request.user.get_username()) for s in queryset)
        self.message_user(request, f"Enabled {changed} strateg{'y' if changed == 1 else 'ies'}.", messages.SUCCESS)

    @admin.action(description="Disable selected strategies (open trades exit by their rules)")
    def disable_strategies(self, request, queryset):
        changed = sum(services.set_strategy_enabled(s, False, actor=request.user.get_username()) for s in queryset)
        self.message_user(request, f"Disabled {changed} strateg{'y' if changed == 1 else 'ies'}.", messages.SUCCESS)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Broker-driven records: browsable, never edited by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Signal)
class SignalAdmin(ReadOnlyAdmin):
    list_display = ("key", "strategy", "instrument", "phase", "detected_at", "confirmed_at", "closed_at")
    list_filter = ("strategy", "phase")
    search_fields = ("key", "instrument__trading_symbol")
    date_hierarchy = "detected_at"


class FillInline(admin.TabularInline):
    model = Fill
    extra = 0
    can_delete = False
    readonly_fields = ("broker_trade_id", "quantity", "price", "filled_at", "charges")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = (
        "client_order_id",
        "broker_order_id",
        "instrument",
        "side",
        "purpose",
        "quantity",
        "filled_quantity",
        "limit_price",
        "average_price",
        "state",
        "created_at",
    )
    list_filter = ("state", "side", "purpose", "strategy", "order_type")
    search_fields = ("client_order_id", "broker_order_id", "instrument__trading_symbol", "reason")
    date_hierarchy = "created_at"
    inlines = (FillInline,)


@admin.register(Fill)
class FillAdmin(ReadOnlyAdmin):
    list_display = ("broker_trade_id", "order", "quantity", "price", "charges", "filled_at")
    search_fields = ("broker_trade_id", "order__client_order_id")
    date_hierarchy = "filled_at"


@admin.register(Position)
class PositionAdmin(ReadOnlyAdmin):
    list_display = (
        "instrument",
        "strategy",
        "net_quantity",
        "average_price",
        "last_price",
        "realised_pnl",
        "unrealised_pnl",
        "charges",
        "opened_at",
    )
    list_filter = ("strategy", "instrument__underlying")
    search_fields = ("instrument__trading_symbol",)
    date_hierarchy = "opened_at"


@admin.register(Trade)
class TradeAdmin(ReadOnlyAdmin):
    list_display = (
        "instrument",
        "strategy",
        "direction",
        "quantity",
        "entry_price",
        "exit_price",
        "gross_pnl",
        "charges",
        "net_pnl",
        "exit_reason",
        "closed_at",
    )
    list_filter = ("strategy", "direction", "exit_reason")
    search_fields = ("instrument__trading_symbol",)
    date_hierarchy = "closed_at"
