from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.urls import include, path, re_path

from quanthub import health
from quanthub.api import SchemaView, api_not_found
from quanthub.roles import scope_admin_by_role
from trading import views as trading_views


def favicon(request):
    """Browsers ask for /favicon.ico whatever the page links: send them to the SVG.
    Resolved per request: the static manifest exists only after collectstatic."""
    return HttpResponsePermanentRedirect(static("favicon.svg"))


admin.site.site_header = "Quant Hub administration"
scope_admin_by_role(admin.site)  # every admin module is registered by now (autodiscover)
admin.site.site_title = "Quant Hub admin"

urlpatterns = [
    path("", trading_views.overview, name="dashboard"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("trading/", include("trading.urls")),
    path("risk/", include("risk.urls")),
    path("compliance/", include("audit.urls")),
    path("api/v1/", include("quanthub.api_urls")),
    # The OpenAPI schema only (no Swagger UI: it would load from a CDN); for logged-in users.
    path("api/schema/", SchemaView.as_view(), name="api-schema"),
    re_path(r"^api/", api_not_found),  # anything else under /api/: a JSON 404
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("health/metrics", health.metrics, name="health-metrics"),
    path("favicon.ico", favicon),
]
