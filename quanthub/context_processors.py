from __future__ import annotations

from quanthub.roles import roles_of


def roles(request):
    user = getattr(request, "user", None)
    return {"user_roles": roles_of(user) if user is not None else frozenset()}


# Permissions the dashboards show controls for; the views check them again.
UI_PERMISSIONS = (
    "trading.kill_all",
    "trading.exit_position",
    "trading.acknowledge_alert",
    "trading.toggle_strategy",
    "risk.change_risklimits",
)


def ui_permissions(request):
    """Body classes like ``can-kill_all``: pushed panels are the same HTML for
    every viewer, so controls a user may not use are hidden by CSS (and refused
    by the view if forced)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"ui_permission_classes": ""}
    return {
        "ui_permission_classes": " ".join(
            "can-" + perm.split(".", 1)[1] for perm in UI_PERMISSIONS if user.has_perm(perm)
        )
    }
