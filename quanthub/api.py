"""What every REST endpoint shares: authentication order, permission checks
by Django permission (the roles in ``quanthub/roles.py`` grant them), and
pagination.

Views ask for a permission, never a group name, so a role gains or loses an
endpoint by changing ``ROLE_PERMISSIONS`` alone.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.db import connections
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView
from rest_framework import exceptions, serializers
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView, exception_handler

from quanthub.clock import IST
from quanthub.roles import roles_of

log = logging.getLogger(__name__)

T = TypeVar("T")


def actor(request) -> str:
    """Who did it, in the audit log: the same form as the dashboard's actions."""
    return f"user:{request.user.get_username()}"


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request) -> int:
        """``page_size`` is a whole number from 1 to 500 or absent: anything else
        (``null``, ``abc``, ``0``) is a 400, not silently the default."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise exceptions.ValidationError(
                {self.page_size_query_param: [f"A whole number from 1 to {self.max_page_size}."]}
            )
        return int(raw)

    def get_page_number(self, request, paginator):
        raw = request.query_params.get(self.page_query_param, "1")
        if not raw.isdigit() or int(raw) < 1:
            raise exceptions.ValidationError({self.page_query_param: ["A whole number from 1."]})
        return raw


class IstDateTimeField(serializers.DateTimeField):
    """Every time in the API carries its offset, in one timezone: IST."""

    def to_representation(self, value):
        if value is None:
            return None
        return value.astimezone(IST).isoformat()


class IstTimeField(serializers.TimeField):
    """A time of day as RFC 3339 ``full-time`` (with its offset, IST), as the schema's
    ``format: time`` says; accepts it with or without the offset."""

    def to_representation(self, value):
        if value is None:
            return None
        return value.replace(tzinfo=None).isoformat() + "+05:30"

    def to_internal_value(self, value):
        if isinstance(value, str):
            try:
                parsed = dt.time.fromisoformat(value)
            except ValueError:
                self.fail("invalid", format="hh:mm[:ss][+05:30]")
            if parsed.tzinfo is not None:
                at = dt.datetime.combine(dt.date(2000, 1, 3), parsed).astimezone(IST)
                parsed = at.time()
            return parsed.replace(tzinfo=None)
        return super().to_internal_value(value)


class StrictSerializerMixin:
    """Refuses what the schema does not allow: unknown fields and a body that is not
    a JSON object."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise exceptions.ValidationError({"non_field_errors": ["The body must be a JSON object."]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise exceptions.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class ErrorSerializer(serializers.Serializer):
    """Every error under /api/ is a JSON object: ``detail`` for the message, or one
    list of messages per bad field."""

    detail = serializers.CharField(required=False)


def json_exception_handler(exc, context):
    """DRF's handler, with every error body a JSON object (a bare list becomes
    ``{"detail": [...]}``) and anything unexpected a JSON 500, never an HTML page."""
    response = exception_handler(exc, context)
    if response is None:
        log.exception("api error", extra={"view": type(context.get("view")).__name__})
        return JsonResponse({"detail": "Internal error; it has been logged."}, status=500)
    if isinstance(response.data, list):
        response.data = {"detail": response.data}
    return response


@csrf_exempt  # it changes nothing; a POST to a wrong URL is a 404, not a CSRF page
def api_not_found(request, *args, **kwargs):
    """Anything under /api/ that no route matches: a JSON 404 (never Django's page)."""
    return JsonResponse({"detail": "Not found."}, status=404)


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
    parser_classes = [JSONParser]  # a body is JSON or it is refused (415)

    def initial(self, request, *args, **kwargs):
        # Times in serializers are rendered in IST (DRF renders in the current timezone).
        timezone.activate(IST)
        super().initial(request, *args, **kwargs)

    def finalize_response(self, request, response, *args, **kwargs):
        timezone.deactivate()
        return super().finalize_response(request, response, *args, **kwargs)


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


ERROR_SCHEMA = {
    "type": "object",
    "description": "An error: `detail` holds the message; a 400 has one list of messages per bad field instead.",
    "properties": {"detail": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}},
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
}
_ERRORS = {
    "400": "The query or body is not what the schema allows; the body names each bad field.",
    "401": "Not authenticated: send `Authorization: Token <key>` (see WWW-Authenticate) or a session cookie.",
    "403": "Authenticated, but without the role or permission this operation needs.",
    "404": "No such object (or page).",
    "405": "The method is not allowed here.",
    "415": "The body is not JSON (`Content-Type: application/json`).",
    "429": "Too many requests (API_THROTTLE_RATE); retry after the Retry-After header's seconds.",
}


def document_errors(result, generator, request, public):
    """drf-spectacular post-processing: every operation documents the errors it can
    return (with a JSON body), so a client, and a schema check, never meets an
    undocumented status."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            codes = ["401", "403", "405", "429"]
            if operation.get("parameters") or operation.get("requestBody") or method in ("post", "put", "patch"):
                codes.append("400")
            if "{" in path or any(p.get("name") == "page" for p in operation.get("parameters", [])):
                codes.append("404")
            if method in ("post", "put", "patch"):
                codes.append("415")
            for code in codes:
                operation["responses"].setdefault(code, {"description": _ERRORS[code], "content": ref})
    return result


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema, for authenticated users. Anonymous gets the API's 401 with
    its ``WWW-Authenticate`` challenge and a JSON body (not a YAML one)."""

    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = "application/json"
        return response
