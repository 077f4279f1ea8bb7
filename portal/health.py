"""Process endpoints for load balancers and Prometheus; none needs a login and none touches instances."""
from django.db import connection
from django.db.models import Count
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from cells.models import Instance


@require_GET
def healthz(request):
    """The process is alive and serving requests."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    """The process can do its job: the database answers and the task broker is reachable."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; say which
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        from django_q.brokers import get_broker

        get_broker().ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {exc.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


@require_GET
def metrics(request):
    """Fleet gauges in the Prometheus text format, read fresh from the database on each scrape."""
    registry = CollectorRegistry()
    instances = Gauge("cellhub_instances", "Instances by state and region", ["state", "region"], registry=registry)
    rows = Instance.objects.order_by().values_list("state", "region__slug").annotate(total=Count("pk"))
    for state, region, count in rows:
        instances.labels(state=state, region=region).set(count)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

