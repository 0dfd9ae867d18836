from __future__ import annotations

from django.contrib import admin, messages

from marketdata.anomaly import training
from marketdata.models import AnomalyModel, ExchangeHoliday, Instrument, Underlying


@admin.register(Underlying)
class UnderlyingAdmin(admin.ModelAdmin):
    list_display = ("symbol", "name", "strike_step", "expiry_rule", "is_active")


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    list_display = (
        "trading_symbol",
        "underlying",
        "kind",
        "strike",
        "expiry",
        "lot_size",
        "freeze_quantity",
        "security_id",
    )
    list_filter = ("underlying", "kind", "expiry", "is_active")
    search_fields = ("trading_symbol", "security_id")
    date_hierarchy = "expiry"


@admin.register(ExchangeHoliday)
class ExchangeHolidayAdmin(admin.ModelAdmin):
    list_display = ("date", "exchange", "description")
    date_hierarchy = "date"


@admin.register(AnomalyModel)
class AnomalyModelAdmin(admin.ModelAdmin):
    """Versions are written by training only: operators pin, unpin and roll back."""

    list_display = (
        "underlying",
        "id",
        "trained_for",
        "window_start",
        "window_end",
        "samples",
        "contamination",
        "live",
        "pinned",
        "retired",
        "created_at",
    )
    list_filter = ("underlying", "live", "pinned", "retired")
    actions = ("pin_selected", "unpin_selected", "roll_back_selected")
    readonly_fields = [f.name for f in AnomalyModel._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Pin: make live and keep it live through nightly training")
    def pin_selected(self, request, queryset):
        if queryset.values("underlying").distinct().count() != queryset.count():
            self.message_user(request, "Pin one version per underlying.", messages.ERROR)
            return
        for row in queryset:
            training.pin(row)
        self.message_user(request, f"Pinned {queryset.count()} version(s); engines load them at their next check.")

    @admin.action(description="Unpin (the next nightly training replaces it)")
    def unpin_selected(self, request, queryset):
        for row in queryset:
            training.unpin(row)
        self.message_user(request, f"Unpinned {queryset.count()} version(s).")

    @admin.action(description="Roll back the selected underlyings to their previous version")
    def roll_back_selected(self, request, queryset):
        for underlying in sorted(set(queryset.values_list("underlying", flat=True))):
            previous = training.rollback(underlying)
            if previous is None:
                self.message_user(request, f"{underlying}: no earlier version to roll back to.", messages.WARNING)
            else:
                self.message_user(request, f"{underlying}: version {previous.pk} is live again.")
