from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from risk.models import RiskLimits
from risk.services import get_trading_state


@require_GET
@login_required
def dashboard(request):
    return render(
        request,
        "dashboard.html",
        {"trading_state": get_trading_state(), "limits": RiskLimits.active()},
    )
