"""The hub's URL map; these top-level paths are fixed from the start."""
from functools import wraps

from django.contrib import admin
from django.urls import include, path
from django.views.defaults import bad_request, page_not_found, server_error
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from portal import probes
from portal.api.errors import json_bad_request, json_not_found, json_server_error

admin.site.site_header = "Cell Hub — support"
admin.site.site_title = "Cell Hub"
admin.site.index_title = "Fleet"

# The API docs load only from the hub: Swagger UI and Redoc come from drf-spectacular-sidecar's static files, and the
# browser is told to refuse anything else (Redoc's footer would fetch a logo from its CDN).
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; font-src 'self' data:"
)


def hub_only(view):
    """The page may load nothing from outside the hub (Content-Security-Policy)."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
        return response

    return wrapped


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("portal.api.urls", namespace="api")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI and Redoc from the hub's own static files (drf-spectacular-sidecar): no request leaves the hub.
    path("api/docs/", hub_only(SpectacularSwaggerView.as_view(url_name="schema")), name="api-docs"),
    path("api/redoc/", hub_only(SpectacularRedocView.as_view(url_name="schema")), name="api-redoc"),
    path("healthz", probes.healthz, name="healthz"),
    path("readyz", probes.readyz, name="readyz"),
    path("metrics", probes.metrics, name="metrics"),
    path("", include("portal.site.urls")),
]


def handler400(request, exception=None):
    """API paths answer in the API's error shape (a body over the size limit: 413); pages get Django's page."""
    if request.path.startswith("/api/"):
        return json_bad_request(request, exception)
    return bad_request(request, exception)


def handler404(request, exception=None):
    """API paths answer in the API's error shape; pages get Django's page."""
    if request.path.startswith("/api/"):
        return json_not_found(request, exception)
    return page_not_found(request, exception)


def handler500(request):
    if request.path.startswith("/api/"):
        return json_server_error(request)
    return server_error(request)
