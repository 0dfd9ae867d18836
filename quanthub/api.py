"""What every REST endpoint shares: authentication order, permission checks
by Django permission (the roles in ``quanthub/roles.py`` grant them), and
pagination.

Views ask for a permission, never a group name, so a role gains or loses an
endpoint by changing ``ROLE_PERMISSIONS`` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.db import connections
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.views import APIView

from quanthub.roles import roles_of

T = TypeVar("T")


def actor(request) -> str:
    """Who did it, in the audit log: the same form as the dashboard's actions."""
    return f"user:{request.user.get_username()}"


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def require_perm(*perms: str) -> type[BasePermission]:
    """A permission class passing users who hold every one of ``perms`` ("app.codename")."""

    class HasPerms(BasePermission):
        message = f"You need the permission {', '.join(perms)}."

        def has_permission(self, request, view) -> bool:
            user = request.user
            return bool(user and user.is_authenticated and user.has_perms(perms))

    HasPerms.__name__ = HasPerms.__qualname__ = "Has_" + "_".join(p.replace(".", "_") for p in perms)
    return HasPerms


class HasRole(BasePermission):
    """Any of the three roles (or a superuser): read access to the API."""

    message = "You need a Quant Hub role (Trader, Risk Manager or Compliance)."

    def has_permission(self, request, view) -> bool:
        return bool(roles_of(request.user))


class ApiView(APIView):
    """Token authentication first, so an anonymous client gets 401 with a
    ``WWW-Authenticate: Token`` challenge rather than the 403 that session
    authentication alone would give."""

    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated, HasRole]


def run_in_fresh_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run ``fn`` (which calls ``asyncio.run``) in a new thread and wait for it.

    Under ASGI a sync view runs in its request's thread-sensitive executor
    thread; an event loop started there that calls ``sync_to_async`` would
    queue work onto the very thread it blocks. A fresh thread starts with an
    empty context, so that work goes to asgiref's shared sync thread instead.
    """

    def call() -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-oms") as pool:
        return pool.submit(call).result()
