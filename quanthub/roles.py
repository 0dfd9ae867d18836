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


# What each role sees in the admin ("app_label.model"), as the README's roles table
# lists it. Viewing rights alone would show every model of our apps; the admin shows
# a user the union of the lists of their roles, superusers everything.
_TRADER_ADMIN = ("trading.order", "trading.fill", "trading.position", "trading.trade", "risk.risklimits")
ADMIN_MODELS: dict[str, frozenset[str]] = {
    TRADER: frozenset(_TRADER_ADMIN),
    RISK_MANAGER: frozenset(
        (
            *_TRADER_ADMIN,
            "trading.strategy",
            "trading.signal",
            "trading.reconciliationbreak",
            "risk.tradingstate",
            "risk.eventday",
            "risk.breakertrip",
            "risk.chargerate",
            "risk.gaterefusal",
            "marketdata.underlying",
            "marketdata.instrument",
            "marketdata.exchangeholiday",
        )
    ),
    COMPLIANCE: frozenset(("audit.auditrecord", "trading.order", "trading.fill", "trading.trade")),
}


def admin_models_for(user) -> frozenset[str] | None:
    """The admin models a user sees; None: all of them (a superuser)."""
    if user.is_superuser:
        return None
    return frozenset().union(*(ADMIN_MODELS[role] for role in roles_of(user)))


def scope_admin_by_role(site) -> None:
    """Limit every registered ModelAdmin to the models of the user's roles: the model
    leaves the admin index and its pages answer 403. Permissions still decide what a
    user may change on the models they see."""
    for model, model_admin in site._registry.items():
        label = f"{model._meta.app_label}.{model._meta.model_name}"
        for name in (
            "has_view_permission",
            "has_module_permission",
            "has_change_permission",
            "has_add_permission",
            "has_delete_permission",
        ):
            original = getattr(model_admin, name)
            if getattr(original, "_role_scoped", False):
                continue

            def scoped(request, *args, _original=original, _label=label, **kwargs):
                allowed = admin_models_for(request.user)
                if allowed is not None and _label not in allowed:
                    return False
                return _original(request, *args, **kwargs)

            scoped._role_scoped = True
            setattr(model_admin, name, scoped)


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
