"""The hub's URL map; these top-level paths are fixed from the start."""
from django.contrib import admin
from django.urls import include, path
from django.views.defaults import page_not_found, server_error
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from portal import probes
from portal.api.errors import json_not_found, json_server_error

admin.site.site_header = "Cell Hub — support"
admin.site.site_title = "Cell Hub"
admin.site.index_title = "Fleet"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("portal.api.urls", namespace="api")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI and Redoc from the hub's own static files (drf-spectacular-sidecar): no request leaves the hub.
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("healthz", probes.healthz, name="healthz"),
    path("readyz", probes.readyz, name="readyz"),
    path("metrics", probes.metrics, name="metrics"),
    path("", include("portal.site.urls")),
]


def handler404(request, exception=None):
    """API paths answer in the API's error shape; pages get Django's page."""
    if request.path.startswith("/api/"):
        return json_not_found(request, exception)
    return page_not_found(request, exception)


def handler500(request):
    if request.path.startswith("/api/"):
        return json_server_error(request)
    return server_error(request)
