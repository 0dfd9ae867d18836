from __future__ import annotations

from django.contrib import admin

from audit.models import AuditRecord


@admin.register(AuditRecord)
class AuditRecordAdmin(admin.ModelAdmin):
    """Read-only for everyone, superusers included: the chain is append-only."""

    list_display = ("seq", "created_at", "actor", "action", "subject")
    list_filter = ("action", "actor")
    search_fields = ("subject", "action", "actor")
    date_hierarchy = "created_at"
    readonly_fields = ("seq", "created_at", "actor", "action", "subject", "payload", "prev_hash", "hash", "mac")
    list_per_page = 100

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
