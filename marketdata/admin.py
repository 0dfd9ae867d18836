from __future__ import annotations

from django.contrib import admin

from marketdata.models import ExchangeHoliday, Instrument, Underlying


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
