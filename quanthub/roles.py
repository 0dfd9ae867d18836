"""The three roles and what each may do.

Groups are created and kept in step by data migrations calling ``sync_roles``;
code asks ``has_role`` or checks a permission, never a group name spelled out
in a view.
"""

from __future__ import annotations

TRADER = "Trader"
RISK_MANAGER = "Risk Manager"
COMPLIANCE = "Compliance"
ROLES = (TRADER, RISK_MANAGER, COMPLIANCE)

_VIEW_ALL_APPS = ("marketdata", "trading", "risk", "audit")

# Permissions beyond "view everything in our apps", as "app_label.codename".
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    TRADER: (
        "trading.kill_all",
        "trading.exit_position",
        "trading.acknowledge_alert",
    ),
    RISK_MANAGER: (
        "trading.kill_all",
        "trading.exit_position",
        "trading.acknowledge_alert",
        "trading.change_strategy",
        "trading.toggle_strategy",
        "risk.add_risklimits",
        "risk.change_risklimits",
        "risk.change_tradingstate",
        "risk.add_eventday",
        "risk.change_eventday",
        "risk.delete_eventday",
        "risk.change_breakertrip",
        "risk.add_chargerate",
        "risk.change_chargerate",
        "risk.view_gaterefusal",
        "trading.resolve_reconciliation",
    ),
    COMPLIANCE: (
        "audit.export_audit",
        "audit.verify_audit",
    ),
}


def sync_roles(apps, schema_editor=None) -> None:
    """Create the groups and give each its permissions (idempotent).

    Works with the historical app registry inside migrations. Permissions are
    created first, because Django only creates them after all migrations ran.
    """
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    view_perms = list(
        Permission.objects.filter(content_type__app_label__in=_VIEW_ALL_APPS, codename__startswith="view_")
    )
    for role in ROLES:
        group, _ = Group.objects.get_or_create(name=role)
        perms = list(view_perms)
        for dotted in ROLE_PERMISSIONS[role]:
            app_label, codename = dotted.split(".", 1)
            perm = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
            if perm is not None:
                perms.append(perm)
        group.permissions.set(perms)


def roles_of(user) -> frozenset[str]:
    if user is None or not user.is_authenticated:
        return frozenset()
    cached = getattr(user, "_quanthub_roles", None)
    if cached is None:
        cached = frozenset(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        if user.is_superuser:
            cached = frozenset(ROLES)
        user._quanthub_roles = cached
    return cached


def has_role(user, *roles: str) -> bool:
    return bool(roles_of(user) & set(roles))
