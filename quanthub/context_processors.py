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


def ui_can(user) -> dict[str, bool]:
    """Which dashboard controls a user may use (``can.kill_all`` …): a control a user
    may not use is not rendered at all, and its view refuses it if forced."""
    if user is None or not user.is_authenticated:
        return {}
    return {perm.split(".", 1)[1]: user.has_perm(perm) for perm in UI_PERMISSIONS}


def ui_variant(can: dict[str, bool]) -> str:
    """The permission set as a key: pages of users who may use the same controls
    share one rendering of each panel."""
    return ",".join(sorted(name for name, allowed in can.items() if allowed))


def ui_permissions(request):
    return {"can": ui_can(getattr(request, "user", None))}
