"""The scheduled health pass over the fleet, batched so its cost per instance stays flat from 1,000 to 100,000.

One query reads every instance to check (in chunks, pool after pool, with its port and its share's firewall
address); one driver call per compute pool lists every deployment of the pool (``ComputeDriver.statuses``:
supervisord's ``getAllProcessInfo``, the cluster's deployments by the hub's label), ``LIST_CONCURRENCY`` pools at
once, each started as soon as its instances are read; the HTTP checks run on a thread pool of
``HEALTH_HTTP_CONCURRENCY`` sharing kept-alive connections, the next pool's started before the pool before is
written (a pipeline: the database's and the servers' waits overlap). Per chunk of ``CHUNK`` instances: one statement
creates the health rows of instances checked for the first time (only when there are some), one claims the chunk
and reads its current health (``UPDATE … RETURNING``: instances another check holds are skipped), one ``UPDATE``
per distinct outcome writes the checks that need no action (one for a healthy chunk), one ``INSERT`` the history
rows of the changes among them. Only an instance to restart or flag is handled alone (``outcome_act``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.expressions import RawSQL
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
    HealthClient,
    Probe,
    health_request,
    http_findings,
    probe_result,
    status_findings,
    unknown_probe,
)

logger = logging.getLogger(__name__)

# Instances claimed, checked and written together.
CHUNK = 1000
# Compute pools asked for their deployments at once (each list call mostly waits for its cluster).
LIST_CONCURRENCY = 4
# The fields of an instance the pass reads (what the probe, the driver's list and the firewall need).
FIELDS = ("id", "name", "hostname", "server_version", "state", "compute_pool_id")
HEALTH_FIELDS = ("status", "action", "unhealthy_since", "restart_attempts", "last_restart_at", "flagged_at")

# Ids travel as one array literal (``{1,2,3}``): one parameter, not a thousand to quote.
_CLAIM = f"""
UPDATE {InstanceHealth._meta.db_table} SET checking_since = %s
WHERE instance_id = ANY(%s::int[]) AND (checking_since IS NULL OR checking_since < %s)
RETURNING instance_id, {", ".join(HEALTH_FIELDS)}
"""
# The health rows of instances checked for the first time, as the model's defaults make them.
_CREATE = f"""
INSERT INTO {InstanceHealth._meta.db_table} (instance_id, status, action, detail, restart_attempts, flag_reason)
SELECT unnest(%s::int[]), %s, %s, '', 0, '' ON CONFLICT DO NOTHING
"""
# The history rows of a chunk, from one array per column.
_HISTORY = f"""
INSERT INTO {HealthCheck._meta.db_table} (instance_id, checked_at, status, action, detail, details)
SELECT i, %s, s, a, d, j::jsonb
FROM unnest(%s::int[], %s::text[], %s::text[], %s::text[], %s::text[]) AS t(i, s, a, d, j)
"""


def _ids(ids) -> str:
    return "{" + ",".join(str(pk) for pk in ids) + "}"


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


def _instances_by_pool(pools: dict[int, Pool]):
    """The instances to check, pool after pool: ``(pool, its instances)``, each instance with ``port`` (0: none),
    ``share_address`` (None: no share) and ``health_id`` (None: never checked). One query, read in chunks."""
    query = (
        Instance.objects.filter(state=InstanceState.RUNNING, compute_pool__in=list(pools))
        .exclude(pk__in=_busy())
        .only(*FIELDS)
        .annotate(port=F("host_port__port"), share_address=F("share__firewall_address"),
                  health_id=F("health__instance_id"))
        .order_by("compute_pool_id", "pk")
    )
    group: list[Instance] = []
    for instance in query.iterator(chunk_size=5 * CHUNK):
        if group and instance.compute_pool_id != group[0].compute_pool_id:
            yield pools[group[0].compute_pool_id], group
            group = []
        instance.compute_pool = pools[instance.compute_pool_id]  # the row read already: no query per instance
        instance.port = instance.port or 0
        group.append(instance)
    if group:
        yield pools[group[0].compute_pool_id], group


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


def _ask_all(asking: list[tuple[int, tuple[str, dict], str]], client) -> list[tuple[int, dict, list[str]]]:
    """One worker's share of the HTTP checks, asked one after the other."""
    return [(pk, *http_findings(request, version, client=client)) for pk, request, version in asking]


class _Prober:
    """The HTTP half of the checks, on a bounded thread pool sharing one ``HealthClient`` (connections kept alive). The
    checks of a chunk are split into one task per worker (not one per check: a task costs as much as a check)."""

    def __init__(self):
        self.concurrency = max(int(settings.CELLHUB["HEALTH_HTTP_CONCURRENCY"]), 1)
        self.client = HealthClient()
        self.executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="health-http")

    def submit(self, instances: list[Instance], statuses: dict[int, DeploymentStatus]):
        """Start the instances' probes: their status's findings now and, when those show no problem, their own
        answer on the thread pool. ``collect`` gives the probes."""
        done: dict[int, Probe] = {}
        found, asking = {}, []
        for instance in instances:
            status = statuses.get(instance.pk) or DeploymentStatus(exists=False)
            details, problems = status_findings(status, instance.server_version)
            request = health_request(instance, port=instance.port) if not problems else None
            if request is None:
                done[instance.pk] = probe_result(status, details, problems)
            else:
                found[instance.pk] = (status, details)
                asking.append((instance.pk, request, instance.server_version))
        step = -(-len(asking) // self.concurrency) or 1
        tasks = [self.executor.submit(_ask_all, asking[i:i + step], self.client) for i in range(0, len(asking), step)]
        return done, found, tasks

    @staticmethod
    def collect(started) -> dict[int, Probe]:
        done, found, tasks = started
        for task in tasks:
            for pk, http_details, problems in task.result():
                status, details = found[pk]
                done[pk] = probe_result(status, {**details, **http_details}, problems)
        return done

    def close(self):
        self.executor.shutdown(wait=True)
        self.client.close()


def _claim_chunk(chunk: list[Instance], now: datetime) -> dict[int, _Health]:
    """Claim the chunk's instances for this check (creating the health rows of those checked for the first time)
    and read their current health; instances another check holds are left out."""
    new = [instance.pk for instance in chunk if instance.health_id is None]
    stale = now - timedelta(seconds=CHECK_CLAIM_SECONDS)
    if connection.vendor != "postgresql":  # the embedded default (SQLite): the same claim in the ORM's terms
        InstanceHealth.objects.bulk_create([InstanceHealth(instance_id=pk) for pk in new], ignore_conflicts=True)
        pks = [instance.pk for instance in chunk]
        InstanceHealth.objects.filter(Q(checking_since__isnull=True) | Q(checking_since__lt=stale),
                                      instance_id__in=pks).update(checking_since=now)
        rows = InstanceHealth.objects.filter(instance_id__in=pks, checking_since=now).values_list(
            "instance_id", *HEALTH_FIELDS)
        return {row[0]: _Health(*row[1:]) for row in rows}
    with connection.cursor() as cursor:
        if new:
            cursor.execute(_CREATE, [_ids(new), HealthStatus.UNKNOWN.value, HealthAction.NONE.value])
        cursor.execute(_CLAIM, [now, _ids(instance.pk for instance in chunk), stale])
        return {row[0]: _Health(*row[1:]) for row in cursor.fetchall()}


def _count(counts: dict, key: str) -> None:
    counts[str(key)] = counts.get(str(key), 0) + 1


@dataclasses.dataclass
class _PoolCheck:
    """A pool whose checks are under way: its driver and, per chunk, the instances claimed, their health and their
    probes being taken."""

    driver: object
    chunks: list = dataclasses.field(default_factory=list)


def _pool_start(driver, instances: list[Instance], statuses, prober: _Prober, now: datetime) -> _PoolCheck:
    """Claim the pool's instances chunk by chunk and start their probes from ``statuses`` (the pool's list, or the
    ``unknown`` probe of a pool that did not answer)."""
    work = _PoolCheck(driver)
    for start in range(0, len(instances), CHUNK):
        chunk = instances[start:start + CHUNK]
        claimed = _claim_chunk(chunk, now)
        mine = [instance for instance in chunk if instance.pk in claimed]
        if not mine:
            continue
        if isinstance(statuses, Probe):  # the pool did not answer: unknown for all, nothing asked
            started = ({instance.pk: statuses for instance in mine}, {}, [])
        else:
            started = prober.submit(mine, statuses)
        work.chunks.append((mine, claimed, started))
    return work


def _pool_finish(work: _PoolCheck, now: datetime, counts: dict) -> None:
    """Wait for the pool's probes, decide, act and write, chunk by chunk; then the firewalls follow."""
    checked = []
    for mine, claimed, started in work.chunks:
        checked += _chunk_finish(mine, claimed, _Prober.collect(started), now, counts)
    _follow_firewalls(work.driver, checked, counts)


def _chunk_finish(mine: list[Instance], claimed: dict[int, _Health], found: dict[int, Probe], now: datetime,
                  counts: dict) -> list[Instance]:
    """Decide each claimed instance's outcome and write the chunk: one ``UPDATE`` per distinct outcome, one
    ``INSERT`` of the changes; a restart or a flag alone. Returns the instances checked (not unknown) whose share
    firewall may need to follow them."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    rows: list[tuple] = []  # the history rows: (instance id, status, action, detail, details as JSON)
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
                    rows.append((instance.pk, str(outcome.status), str(outcome.action), outcome.detail,
                                 json.dumps(probe.details, cls=DjangoJSONEncoder)))
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
    postgres = connection.vendor == "postgresql"
    with transaction.atomic():
        for changes, ids in groups.items():
            InstanceHealth.objects.filter(
                instance_id__in=RawSQL("SELECT unnest(%s::int[])", [_ids(ids)]) if postgres else ids
            ).update(**dict(changes))
        if rows and postgres:
            with connection.cursor() as cursor:
                ids, statuses, actions, details, payloads = zip(*rows, strict=True)
                cursor.execute(_HISTORY, [now, _ids(ids), list(statuses), list(actions), list(details), list(payloads)])
        elif rows:  # the embedded default (SQLite)
            HealthCheck.objects.bulk_create([
                HealthCheck(instance_id=pk, checked_at=now, status=status, action=action, detail=detail,
                            details=json.loads(payload))
                for pk, status, action, detail, payload in rows
            ])
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
    pools = {pool.pk: pool for pool in Pool.objects.filter(
        pk__in=Instance.objects.filter(state=InstanceState.RUNNING).exclude(pk__in=_busy()).values("compute_pool_id")
    ).select_related("reef__region")}
    prober = _Prober()
    lister = ThreadPoolExecutor(max_workers=LIST_CONCURRENCY, thread_name_prefix="health-list")
    try:
        listings = []
        for pool, instances in _instances_by_pool(pools):  # each pool's list call starts as soon as it is read
            driver = drivers.for_pool(pool)
            listings.append((driver, instances, lister.submit(_statuses, driver, pool, instances)))
        # Pipelined: a pool is claimed and its HTTP checks started before the pool before it is written.
        under_way: _PoolCheck | None = None
        for driver, instances, listing in listings:
            started = _pool_start(driver, instances, listing.result(), prober, now)
            if under_way is not None:
                _pool_finish(under_way, now, counts)
            under_way = started
        if under_way is not None:
            _pool_finish(under_way, now, counts)
    finally:
        lister.shutdown(wait=True, cancel_futures=True)
        prober.close()
    counts["pruned"] = history_prune(now=now)
    return counts
