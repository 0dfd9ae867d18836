from __future__ import annotations

from quanthub.roles import roles_of


def roles(request):
    user = getattr(request, "user", None)
    return {"user_roles": roles_of(user) if user is not None else frozenset()}
