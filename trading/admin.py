from __future__ import annotations

from django.contrib import admin, messages

from trading import services
from trading.models import Fill, Order, Position, ReconciliationBreak, Signal, Strategy, Trade


@admin.register(Strategy)
class StrategyAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "enabled", "version", "updated_at")
    list_filter = ("enabled",)
    readonly_fields = ("version", "updated_at")
    fields = ("key", "name", "enabled", "params", "version", "updated_at")
    actions = ("enable_strategies", "disable_strategies")

    def save_model(self, request, obj, form, change):
        services.save_strategy(obj, actor=f"user:{request.user.get_username()}", changed=form.changed_data)

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
        changed = sum(
            services.set_strategy_enabled(s, True, actor=f"user:{request.user.get_username()}") for s in queryset
        )
        self.message_user(request, f"Enabled {changed} strateg{'y' if changed == 1 else 'ies'}.", messages.SUCCESS)

    @admin.action(description="Disable selected strategies (open trades exit by their rules)")
    def disable_strategies(self, request, queryset):
        changed = sum(
            services.set_strategy_enabled(s, False, actor=f"user:{request.user.get_username()}") for s in queryset
        )
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


@admin.register(ReconciliationBreak)
class ReconciliationBreakAdmin(admin.ModelAdmin):
    """Differences between the broker and us. Trading stays HALTED while any is open."""

    list_display = ("kind", "key", "account", "detected_at", "resolved_at", "resolved_by", "resolution")
    list_filter = ("kind", "account", ("resolved_at", admin.EmptyFieldListFilter))
    search_fields = ("key",)
    readonly_fields = ("account", "kind", "key", "ours", "broker", "detected_at", "resolved_at", "resolved_by")
    fields = ("account", "kind", "key", "ours", "broker", "detected_at", "resolution", "resolved_at", "resolved_by")
    actions = ("adopt", "mark_resolved")

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm("trading.resolve_reconciliation")

    def save_model(self, request, obj, form, change):
        from trading.orders.reconcile import resolve_break

        if "resolution" in form.changed_data:
            resolve_break(obj, actor=f"user:{request.user.get_username()}", resolution=obj.resolution)

    @admin.action(description="Adopt the selected external orders", permissions=["change"])
    def adopt(self, request, queryset):
        from trading.orders.reconcile import adopt_external_order

        for item in queryset.filter(kind=ReconciliationBreak.Kind.EXTRA_AT_BROKER, resolved_at__isnull=True):
            order = adopt_external_order(item, actor=f"user:{request.user.get_username()}")
            self.message_user(request, f"Adopted {order.client_order_id}.", messages.SUCCESS)

    @admin.action(description="Mark the selected breaks as fixed", permissions=["change"])
    def mark_resolved(self, request, queryset):
        from trading.orders.reconcile import resolve_break

        for item in queryset.filter(resolved_at__isnull=True):
            resolve_break(
                item, actor=f"user:{request.user.get_username()}", resolution="fixed by a risk manager in the admin"
            )
        self.message_user(request, "Marked as fixed.", messages.SUCCESS)
