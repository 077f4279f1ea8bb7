"""Process endpoints for load balancers and Prometheus; none touches instances.

- ``/healthz``: the process is alive;
- ``/readyz``: the database answers and the task broker is reachable (503 naming what is not);
- ``/metrics``: the fleet in the Prometheus text format, read fresh from the database on each scrape by
  ``HubCollector`` in a fixed number of queries, and from counts the database keeps (``cells.tally``, the slot
  counters of ``cells.counters``) rather than from a count of the fleet: its cost follows the number of regions,
  reefs and pools, not of instances or operations. With ``CELLHUB_METRICS_TOKEN`` set it
  answers only ``Authorization: Bearer <that token>``; without one it is open in development and closed (403) in
  production unless ``CELLHUB_METRICS_OPEN=1`` opens it (a scrape from a private network).
"""
from __future__ import annotations

import functools
import hmac

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Max, Min, Q, Sum
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ, Schedule
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from cells.choices import PLACEABLE_POOL_STATES, InstanceState, OperationKind, OperationState, PoolKind
from cells.models import Instance, Pool, Reef, Region
from cells.tally import DURATION_BUCKETS, tally_read
from provisioning.backups.selectors import BACKUP_STATES
from provisioning.models import (
    NEEDS_ATTENTION,
    ORPHAN_OPEN_STATES,
    Backup,
    BackupKind,
    BackupState,
    HealthStatus,
    InstanceHealth,
    Orphan,
)
from provisioning.watchdog import stuck_operations


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
        get_broker().ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {exc.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


@functools.cache
def _broker():
    return get_broker()


def queue_depth() -> int:
    """Tasks waiting in the django-q2 queue. One broker per process (a new one per scrape would open a new Redis
    connection pool each time); with the ORM broker, counted here, because its own ``queue_size`` first closes this
    thread's database connection (``close_old_connections``), so the scrape's next query would open a new one."""
    broker = _broker()
    if isinstance(broker, ORM):
        return OrmQ.objects.using(Conf.ORM).filter(key=broker.list_key, lock__lte=timezone.now()).count()
    return broker.queue_size()


class HubCollector:
    """Collects the hub's gauges from the database at each scrape; the number of queries does not grow with the
    fleet (one or two per family)."""

    def __init__(self, now=None):
        self.now = now or timezone.now()
        self._tallies = None

    @property
    def tallies(self) -> dict:
        """The database's tallies (``cells.tally``), read once per scrape."""
        if self._tallies is None:
            self._tallies = tally_read()
        return self._tallies

    def tally(self, family: str) -> dict:
        return {key[1:]: value for key, value in self.tallies.items() if key[0] == family}

    def collect(self):
        yield from self.instances()
        yield self.free_slots()
        yield from self.operations()
        yield from self.queue()
        yield from self.backups()
        yield from self.health()
        yield self.orphans()
        yield self.schedules()

    def instances(self):
        family = GaugeMetricFamily("cellhub_instances", "Instances by state and region", labels=["state", "region"])
        counts = {(region_id, state): n for (region_id, state, _), (n, _) in self.tally("instances").items()}
        for region_id, region in Region.objects.order_by("slug").values_list("pk", "slug"):
            for state in InstanceState.values:
                family.add_metric([state, region], counts.get((str(region_id), state), 0))
        yield family

    def free_slots(self):
        family = GaugeMetricFamily(
            "cellhub_free_slots",
            "Free slots per reef and kind: database, storage and compute slots of shared available pools, and "
            "instance slots (max_instances) and placeable slots (the least of them) of the reef",
            labels=["region", "reef", "kind"],
        )
        # Set-based over the pools' slot counters: one grouped pass, not a subquery per reef (as selectors'
        # reefs_with_capacity, which gives the same numbers).
        free = {}
        shared = Pool.objects.filter(status__in=[str(s) for s in PLACEABLE_POOL_STATES], dedicated=False)
        for reef_id, kind, slots, shares in (
            shared.order_by().values_list("reef_id", "kind")
            .annotate(slots=Sum(F("capacity") - F("slots_held")), shares=Sum("shares_available"))
        ):
            free[(reef_id, kind)] = shares if kind == PoolKind.STORAGE else max(slots, 0)
        reefs = Reef.objects.order_by("region__slug", "slug").values_list(
            "pk", "slug", "region__slug", "max_instances", "placed_instances"
        )
        for reef_id, slug, region, max_instances, placed in reefs:
            values = {kind: free.get((reef_id, kind), 0) for kind in ("database", "storage", "compute")}
            values["instance"] = max(max_instances - placed, 0)
            values["placeable"] = min(values.values())
            for kind, value in values.items():
                family.add_metric([region, slug, kind], value)
        return family

    def operations(self):
        counts = {(kind, state): n for (kind, state, _), (n, _) in self.tally("operations").items()}
        family = GaugeMetricFamily("cellhub_operations", "Operations by kind and state", labels=["kind", "state"])
        for kind in sorted(set(OperationKind.values) | {kind for kind, _ in counts}):
            for state in OperationState.values:
                family.add_metric([kind, state], counts.get((kind, state), 0))
        yield family

        failed = GaugeMetricFamily(
            "cellhub_operations_failed", "Operations that ended failed, by kind", labels=["kind"]
        )
        for kind in sorted(set(OperationKind.values) | {kind for kind, _ in counts}):
            failed.add_metric([kind], counts.get((kind, OperationState.FAILED), 0))
        yield failed

        # Finished operations by duration bucket (-1: past the last), kept by the database as they end.
        per_bucket: dict = {}
        for (kind, state, bucket), (n, seconds) in self.tally("durations").items():
            row = per_bucket.setdefault((kind, state), {"buckets": {}, "seconds": 0.0})
            row["buckets"][bucket] = n
            row["seconds"] += seconds
        histogram = HistogramMetricFamily(
            "cellhub_operation_duration_seconds",
            "Duration of finished operations (first claim to end), by kind and outcome",
            labels=["kind", "outcome"],
        )
        for (kind, state), row in sorted(per_bucket.items()):
            cumulative, running = [], 0
            for index, bound in enumerate(DURATION_BUCKETS):
                running += row["buckets"].get(index, 0)
                cumulative.append((str(float(bound)), running))
            total = running + row["buckets"].get(-1, 0)
            histogram.add_metric([kind, state], [*cumulative, ("+Inf", total)], max(row["seconds"], 0.0))
        yield histogram

        stuck = GaugeMetricFamily(
            "cellhub_operations_stuck",
            "Operations past a time limit the watchdog has not settled yet, by kind and cause",
            labels=["kind", "cause"],
        )
        tally: dict[tuple[str, str], int] = {}
        for operation, cause, _reason in stuck_operations(now=self.now):
            tally[(operation.kind, cause)] = tally.get((operation.kind, cause), 0) + 1
        for (kind, cause), total in sorted(tally.items()):
            stuck.add_metric([kind, cause], total)
        yield stuck

    def queue(self):
        up = GaugeMetricFamily("cellhub_task_broker_up", "1 when the task broker answered this scrape")
        try:
            depth = queue_depth()
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("cellhub_task_queue_depth", "Tasks waiting in the django-q2 queue", value=depth)

    def backups(self):
        age = GaugeMetricFamily(
            "cellhub_backup_age_seconds",
            "Age of each instance's latest successful backup, over the instances that should have one: the oldest "
            "(the instance worst off) and the newest",
            labels=["kind", "aggregate"],
        )
        missing = GaugeMetricFamily(
            "cellhub_instances_without_backup", "Running or stopped instances with no successful backup of a kind",
            labels=["kind"],
        )
        should_have = Instance.objects.filter(state__in=[str(s) for s in BACKUP_STATES])
        expected = sum(n for (_, state, _), (n, _) in self.tally("instances").items() if state in BACKUP_STATES)
        for kind in BackupKind.values:
            # Set-based: each instance's latest successful backup in one grouped pass, then its bounds over them.
            latest = (
                Backup.objects.filter(kind=kind, state=BackupState.SUCCEEDED, instance__in=should_have)
                .order_by().values("instance_id").annotate(latest=Max("taken_at"))
            )
            bounds = latest.aggregate(oldest=Min("latest"), newest=Max("latest"), backed_up=Count("instance_id"))
            if bounds["oldest"] is not None:
                age.add_metric([kind, "oldest"], (self.now - bounds["oldest"]).total_seconds())
                age.add_metric([kind, "newest"], (self.now - bounds["newest"]).total_seconds())
            missing.add_metric([kind], expected - bounds["backed_up"])
        yield age
        yield missing

    def health(self):
        # Only the rows needing attention are read (index health_needs_attention), never every running instance.
        counts = InstanceHealth.objects.filter(NEEDS_ATTENTION, instance__state=InstanceState.RUNNING).aggregate(
            unhealthy=Count("pk", filter=Q(status=HealthStatus.UNHEALTHY)),
            unknown=Count("pk", filter=Q(status=HealthStatus.UNKNOWN)),
            flagged=Count("pk", filter=Q(flagged_at__isnull=False)),
        )
        family = GaugeMetricFamily(
            "cellhub_instances_health", "Running instances by their last health check (unhealthy, unknown) and "
            "those flagged for staff", labels=["status"],
        )
        for status in ("unhealthy", "unknown", "flagged"):
            family.add_metric([status], counts[status])
        yield family

    def orphans(self):
        family = GaugeMetricFamily(
            "cellhub_orphans", "Open reconciler findings by kind and direction (unclaimed resource, missing resource)",
            labels=["kind", "direction"],
        )
        rows = (
            Orphan.objects.filter(state__in=[str(s) for s in ORPHAN_OPEN_STATES]).order_by()
            .values_list("kind", "direction").annotate(total=Count("pk"))
        )
        for kind, direction, total in rows:
            family.add_metric([kind, direction], total)
        return family

    def schedules(self):
        family = GaugeMetricFamily(
            "cellhub_schedule_overdue_seconds",
            "How late each recurring task is (0 while on time); growing means no worker runs the schedules",
            labels=["schedule"],
        )
        for name, next_run in Schedule.objects.order_by("name").values_list("name", "next_run"):
            late = (self.now - next_run).total_seconds() if next_run else 0.0
            family.add_metric([name], max(late, 0.0))
        return family


def _authorized(request) -> bool:
    token = settings.CELLHUB.get("METRICS_TOKEN")
    if not token:
        return False
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@require_GET
def metrics(request):
    """The fleet in the Prometheus text format, read fresh from the database on each scrape.

    With ``CELLHUB_METRICS_TOKEN`` set, only ``Authorization: Bearer <token>`` is answered (401 otherwise). Without
    one it is open only where ``METRICS_OPEN`` says so (DEBUG, or ``CELLHUB_METRICS_OPEN=1``); production answers 403.
    """
    if settings.CELLHUB.get("METRICS_TOKEN"):
        if not _authorized(request):
            return HttpResponse("metrics need the bearer token\n", status=401, content_type="text/plain",
                                headers={"WWW-Authenticate": "Bearer"})
    elif not settings.CELLHUB.get("METRICS_OPEN"):
        return HttpResponse("metrics are closed: set CELLHUB_METRICS_TOKEN (or CELLHUB_METRICS_OPEN=1)\n",
                            status=403, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
