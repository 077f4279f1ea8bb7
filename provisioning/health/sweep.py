"""The scheduled health pass over the fleet, batched so its cost per instance stays flat from 1,000 to 100,000.

Per compute pool with instances to check: one query reads them (with their port and their share's firewall
address), one driver call lists every deployment of the pool (``ComputeDriver.statuses``: supervisord's
``getAllProcessInfo``, the cluster's deployments by the hub's label), the HTTP checks run on a thread pool of
``HEALTH_HTTP_CONCURRENCY`` sharing one connection pool. Then, per chunk of ``CHUNK`` instances: one statement
creates the health rows of instances checked for the first time (only when there are some), one claims the chunk
and reads its current health (``UPDATE … RETURNING``: instances another check holds are skipped), one ``UPDATE``
per distinct outcome writes the checks that need no action (one for a healthy chunk), one ``INSERT`` the history
rows of the changes among them. Only an instance to restart or flag is handled alone (``outcome_act``).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from cells.choices import OPERATION_ACTIVE_STATES, InstanceState
from cells.models import Instance, Operation, Pool
from provisioning import drivers
from provisioning.drivers.base import DeploymentStatus, DriverError
from provisioning.firewall import share_firewall_follow
from provisioning.health.check import CHECK_CLAIM_SECONDS, decide, outcome_act, outcome_log, outcome_row
from provisioning.health.history import history_prune, is_change
from provisioning.models import HealthAction, HealthCheck, HealthStatus, InstanceHealth
from provisioning.operations import call_with_timeout
from provisioning.probe import (
    Probe,
    health_request,
    http_findings,
    http_pool,
    probe_result,
    status_findings,
    unknown_probe,
)

logger = logging.getLogger(__name__)

# Instances claimed, checked and written together.
CHUNK = 1000
# The fields of an instance the pass reads (what the probe, the driver's list and the firewall need).
FIELDS = ("id", "name", "hostname", "server_version", "state", "compute_pool_id")
HEALTH_FIELDS = ("status", "action", "unhealthy_since", "restart_attempts", "last_restart_at", "flagged_at")

_CLAIM = f"""
UPDATE {InstanceHealth._meta.db_table} SET checking_since = %s
WHERE instance_id = ANY(%s) AND (checking_since IS NULL OR checking_since < %s)
RETURNING instance_id, {", ".join(HEALTH_FIELDS)}
"""


class _Health:
    """An instance's health as the claim read it (the fields ``decide`` looks at)."""

    __slots__ = HEALTH_FIELDS

    def __init__(self, *values):
        for name, value in zip(HEALTH_FIELDS, values, strict=True):
            setattr(self, name, value)


def _busy():
    return Operation.objects.filter(
        state__in=[str(s) for s in OPERATION_ACTIVE_STATES], instance__isnull=False
    ).values("instance_id")


def instances_to_check():
    """Running instances with a deployment and no operation under way."""
    return (
        Instance.objects.filter(state=InstanceState.RUNNING, compute_pool__isnull=False)
        .exclude(pk__in=_busy())
        .select_related("compute_pool", "database_pool", "region", "reef")
        .order_by("pk")
    )


def _pool_instances(pool: Pool) -> list[Instance]:
    """The pool's instances to check, each with ``port`` (0: none), ``share_address`` (None: no share) and
    ``has_health`` (its health row exists), in one query."""
    instances = list(
        Instance.objects.filter(state=InstanceState.RUNNING, compute_pool=pool)
        .exclude(pk__in=_busy())
        .only(*FIELDS)
        .annotate(port=F("host_port__port"), share_address=F("share__firewall_address"),
                  health_id=F("health__instance_id"))
        .order_by("pk")
    )
    for instance in instances:
        instance.compute_pool = pool  # the one row read already: no query per instance
        instance.port = instance.port or 0
    return instances


def _statuses(driver, pool: Pool, instances: list[Instance]) -> dict[int, DeploymentStatus] | Probe:
    """The driver's status of each instance, in one call to the pool; a probe result (``unknown``) when the pool did
    not answer."""
    try:
        return call_with_timeout(
            lambda _abandoned: driver.statuses(instances=instances),
            seconds=settings.CELLHUB["HEALTH_DRIVER_TIMEOUT"], name=f"health statuses of pool {pool}",
        )
    except Exception as error:  # a driver's own bug too: unknown, never a crashed pass
        if not isinstance(error, DriverError):
            logger.exception("health statuses of pool %s could not be read", pool)
        return unknown_probe(instances[0], error)


class _Prober:
    """The HTTP half of the checks, on a bounded thread pool sharing one connection pool (connections reused)."""

    def __init__(self):
        self.concurrency = max(int(settings.CELLHUB["HEALTH_HTTP_CONCURRENCY"]), 1)
        self.pool = http_pool(self.concurrency)
        self.executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="health-http")

    def probes(self, instances: list[Instance], statuses: dict[int, DeploymentStatus]) -> dict[int, Probe]:
        """Each instance's probe: its status's findings and, when those show no problem, its own answer."""
        results: dict[int, Probe] = {}
        asking = {}
        for instance in instances:
            status = statuses.get(instance.pk) or DeploymentStatus(exists=False)
            details, problems = status_findings(status, instance.server_version)
            request = health_request(instance, port=instance.port) if not problems else None
            if request is None:
                results[instance.pk] = probe_result(status, details, problems)
            else:
                asking[instance.pk] = (status, details, self.executor.submit(
                    http_findings, request, instance.server_version, pool=self.pool))
        for pk, (status, details, future) in asking.items():
            http_details, problems = future.result()
            results[pk] = probe_result(status, {**details, **http_details}, problems)
        return results

    def close(self):
        self.executor.shutdown(wait=True)
        self.pool.clear()


def _claim_chunk(chunk: list[Instance], now: datetime) -> dict[int, _Health]:
    """Claim the chunk's instances for this check (creating the health rows of those checked for the first time)
    and read their current health; instances another check holds are left out."""
    new = [InstanceHealth(instance_id=instance.pk) for instance in chunk if instance.health_id is None]
    if new:
        InstanceHealth.objects.bulk_create(new, ignore_conflicts=True)
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM, [now, [instance.pk for instance in chunk],
                                now - timedelta(seconds=CHECK_CLAIM_SECONDS)])
        return {row[0]: _Health(*row[1:]) for row in cursor.fetchall()}


def _count(counts: dict, key: str) -> None:
    counts[str(key)] = counts.get(str(key), 0) + 1


def _check_chunk(chunk: list[Instance], statuses: dict[int, DeploymentStatus] | Probe, prober: _Prober,
                 now: datetime, counts: dict) -> list[Instance]:
    """Check the chunk: claim, probe, decide, write. Returns the instances checked (not unknown) whose share
    firewall may need to follow them."""
    claimed = _claim_chunk(chunk, now)
    if not claimed:
        return []
    mine = [instance for instance in chunk if instance.pk in claimed]
    if isinstance(statuses, Probe):  # the pool did not answer: unknown for all, nothing asked
        found = {instance.pk: statuses for instance in mine}
    else:
        found = prober.probes(mine, statuses)
    groups: dict[tuple, list[int]] = defaultdict(list)
    rows: list[HealthCheck] = []
    checked = []
    for instance in mine:
        health, probe = claimed[instance.pk], found[instance.pk]
        try:
            outcome = decide(health, probe, now)
            if outcome.effect:  # a restart or a flag: alone, with its own writes
                _act_alone(instance, health, probe, outcome, now)
            else:
                groups[tuple(sorted(outcome.health_changes().items()))].append(instance.pk)
                if is_change(before_status=health.status, before_action=health.action, status=outcome.status,
                             action=outcome.action):
                    rows.append(outcome_row(instance.pk, outcome, probe, now))
                if outcome.status != HealthStatus.HEALTHY or outcome.action != HealthAction.NONE:
                    outcome_log(instance.name, outcome)
        except Exception:  # one instance's trouble never stops the pass
            logger.exception("health check of %s failed", instance.name)
            InstanceHealth.objects.filter(instance_id=instance.pk, checking_since=now).update(checking_since=None)
            _count(counts, "errors")
            continue
        _count(counts, outcome.status)
        if outcome.action != HealthAction.NONE:
            _count(counts, outcome.action)
        if outcome.status != HealthStatus.UNKNOWN:
            checked.append(instance)
    with transaction.atomic():
        for changes, ids in groups.items():
            InstanceHealth.objects.filter(instance_id__in=ids).update(**dict(changes))
        if rows:
            HealthCheck.objects.bulk_create(rows)
    return checked


def _act_alone(instance: Instance, health: _Health, probe: Probe, outcome, now: datetime) -> None:
    """Restart or flag one instance (it is read whole: the restart deploys it from its spec), and record it."""
    whole = Instance.objects.select_related("compute_pool", "database_pool", "region", "reef").get(pk=instance.pk)
    outcome_act(whole, outcome, probe)
    with transaction.atomic():
        InstanceHealth.objects.filter(instance_id=instance.pk).update(**outcome.health_changes())
        if is_change(before_status=health.status, before_action=health.action, status=outcome.status,
                     action=outcome.action):
            outcome_row(instance.pk, outcome, probe, now).save()
    outcome_log(instance.name, outcome)


def _follow_firewalls(driver, instances: list[Instance], counts: dict) -> None:
    """The share firewalls follow instances that came back at another address (rescheduled, restarted): the
    addresses are read in one driver call for the pool; only a share whose address differs is touched."""
    with_share = [instance for instance in instances if instance.share_address is not None]
    if not with_share:
        return
    try:
        addresses = driver.share_client_addresses(instances=with_share)
    except DriverError as error:
        logger.warning("share firewalls of pool %s not followed: %s", driver.pool, error)
        return
    for instance in with_share:
        address = addresses.get(instance.pk)
        if address is None or address == instance.share_address:
            continue
        try:
            if share_firewall_follow(instance=instance):
                _count(counts, "firewall_updated")
        except DriverError as error:
            logger.warning("firewall of %s not followed: %s", instance.name, error)


def health_check_pass(*, now: datetime | None = None) -> dict:
    """The scheduled pass: check every running instance (batched per compute pool, see the module's docstring),
    then forget history older than ``HEALTH_HISTORY_DAYS``. Instances with an operation under way, or whose check
    another pass holds, are skipped. Returns counts by status and by action taken (and ``errors``,
    ``firewall_updated`` when there were any, and ``pruned``)."""
    now = now or timezone.now()
    counts: dict[str, int] = {}
    pools = Pool.objects.filter(
        pk__in=Instance.objects.filter(state=InstanceState.RUNNING).exclude(pk__in=_busy()).values("compute_pool_id")
    ).select_related("reef__region").order_by("pk")
    prober = _Prober()
    try:
        for pool in pools:
            instances = _pool_instances(pool)
            if not instances:
                continue
            driver = drivers.for_pool(pool)
            statuses = _statuses(driver, pool, instances)
            checked = []
            for start in range(0, len(instances), CHUNK):
                chunk = instances[start:start + CHUNK]
                checked += _check_chunk(chunk, statuses, prober, now, counts)
            _follow_firewalls(driver, checked, counts)
    finally:
        prober.close()
    counts["pruned"] = history_prune(now=now)
    return counts
