"""REST API for compliance: the audit export, the same content as the compliance page's."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request

from audit.export import FORMATS, stream
from quanthub.api import ApiView, require_perm
from quanthub.clock import RealClock

CONTENT_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}


class ExportQuery(serializers.Serializer):
    date_from = serializers.DateField(required=False)
    date_to = serializers.DateField(required=False)
    format = serializers.ChoiceField(choices=FORMATS, default="csv")

    def validate(self, attrs: dict) -> dict:
        today = RealClock().today()
        attrs["date_from"] = attrs.get("date_from") or today
        attrs["date_to"] = attrs.get("date_to") or attrs["date_from"]
        if attrs["date_from"] > attrs["date_to"]:
            raise serializers.ValidationError({"to": ["Must not be before from."]})
        return attrs


class AuditExportView(ApiView):
    permission_classes = [IsAuthenticated, require_perm("audit.export_audit")]

    def perform_content_negotiation(self, request, force=False):
        # ?format=csv|jsonl names the export's format here, not a DRF renderer.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        summary="Export audit records",
        description="Every record between from and to (IST days, inclusive; default today) with seq, "
        "created_at, actor, action, subject, payload, prev_hash, hash and mac, as CSV or JSON Lines; "
        "verify it offline with `manage.py verify_audit --file`.",
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATE, description="First day (default today)."),
            OpenApiParameter("to", OpenApiTypes.DATE, description="Last day (default: from)."),
            OpenApiParameter("format", OpenApiTypes.STR, enum=list(FORMATS), default="csv"),
        ],
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, "application/x-ndjson"): OpenApiTypes.STR},
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        params = request.query_params
        data = {"format": params.get("format") or "csv"}
        for name, field in (("from", "date_from"), ("to", "date_to")):
            if params.get(name):
                data[field] = params[name]
        query = ExportQuery(data=data)
        if not query.is_valid():
            # Name the fields as the client sent them (from, to), not as Python spells them.
            names = {"date_from": "from", "date_to": "to"}
            raise serializers.ValidationError({names.get(k, k): v for k, v in query.errors.items()})
        date_from, date_to, fmt = (query.validated_data[k] for k in ("date_from", "date_to", "format"))
        response = StreamingHttpResponse(stream(fmt, date_from, date_to), content_type=CONTENT_TYPES[fmt])
        response["Content-Disposition"] = f'attachment; filename="audit-{date_from}-{date_to}.{fmt}"'
        return response
