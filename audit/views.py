"""The compliance page: verification of a day or range, and its export."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from audit.export import FORMATS, stream
from audit.verify import verify
from quanthub.clock import RealClock


def _dates(request) -> tuple[dt.date, dt.date] | None:
    today = RealClock().today()
    try:
        date_from = dt.date.fromisoformat(request.GET.get("from") or today.isoformat())
        date_to = dt.date.fromisoformat(request.GET.get("to") or date_from.isoformat())
    except ValueError:
        return None
    return (date_from, date_to) if date_from <= date_to else None


@require_GET
@login_required
@permission_required("audit.verify_audit", raise_exception=True)
def compliance(request):
    dates = _dates(request)
    if dates is None:
        return render(request, "audit/compliance.html", {"error": "Give dates as YYYY-MM-DD, from ≤ to."}, status=400)
    result = verify(*dates)
    return render(
        request,
        "audit/compliance.html",
        {"date_from": dates[0], "date_to": dates[1], "result": result, "formats": FORMATS},
    )


@require_GET
@login_required
@permission_required("audit.export_audit", raise_exception=True)
def export(request):
    dates = _dates(request)
    fmt = request.GET.get("format", "csv")
    if dates is None or fmt not in FORMATS:
        return HttpResponseBadRequest("Give from/to as YYYY-MM-DD (from ≤ to) and format csv or jsonl.")
    content_type = "text/csv" if fmt == "csv" else "application/x-ndjson"
    response = StreamingHttpResponse(stream(fmt, *dates), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="audit-{dates[0]}-{dates[1]}.{fmt}"'
    return response
