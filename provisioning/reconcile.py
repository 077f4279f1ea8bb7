"""The reconciler: what the drivers report against the hub's rows, and the disagreements, both ways.

A pass (``reconcile_pass``, scheduled every 30 minutes) lists, through each pool's driver, the databases, shares
(buckets / file shares / folders) and deployments of every available or draining pool, and the records of each
DNS zone, and compares them with what the hub's rows claim:

- a database is claimed by each live (not decommissioned) instance of its pool: the name its id derives, the one a
  restore switched it to, and the ones its restores made or kept; a share by its ``Share`` row; a deployment by a
  live instance of its compute pool; a DNS record by a live instance of that name (names the hub reserves for
  itself, and names that cannot be instance names, are not the reconciler's business);
- a name listed by several pools (pools that share one server) is judged once: claimed if any of them claims it,
  and a claim by a pool of the same provider that could not be listed counts too (when unsure, never an orphan);
- an instance that is running, stopped or upgrading, with no operation under way, must have its database, share,
  deployment and DNS record.

A listed resource nobody claims is an ``unclaimed`` finding; an instance missing one of its resources a ``missing``
finding. Findings are rows (``provisioning.models.Orphan``): found again, they are touched; no longer found by a
pass that could judge them (its listing succeeded), they are resolved. Nothing is deleted by a pass. Staff confirm
the clean-up of an unclaimed resource in the admin (``orphan_clean``), which checks again that it exists and is
still unclaimed, then deletes it through its driver; a ``missing`` finding is flagged for staff, never "fixed".
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from cells.choices import (
    INSTANCE_NAME_REGEX,
    OPERATION_ACTIVE_STATES,
    RESERVED_INSTANCE_NAMES,
    InstanceState,
    PoolKind,
    PoolStatus,
)
from cells.counters import counters_drift
from cells.errors import Refused
from cells.models import Instance, Operation, Pool, Region, Share
from cells.tally import tally_drift
from provisioning import drivers
from provisioning.drivers.base import ComputeDriver, DatabaseDriver, resource_prefix
from provisioning.models import (
    ORPHAN_OPEN_STATES,
    InstanceDatabase,
    Orphan,
    OrphanDirection,
    OrphanKind,
    OrphanState,
    Restore,
)
from provisioning.operations import call_with_timeout

logger = logging.getLogger(__name__)

LISTED_POOL_STATES = (PoolStatus.AVAILABLE, PoolStatus.DRAINING)
# Instances in these states must have every resource (checked only while no operation is under way).
COMPLETE_STATES = (InstanceState.RUNNING, InstanceState.STOPPED, InstanceState.UPGRADING)
POOL_KIND_OF = {OrphanKind.DATABASE: PoolKind.DATABASE, OrphanKind.SHARE: PoolKind.STORAGE,
                OrphanKind.DEPLOYMENT: PoolKind.COMPUTE}
_OPEN = [str(s) for s in ORPHAN_OPEN_STATES]


# ---- what the hub claims ----------------------------------------------------------------------------------


def _live_instances():
    return Instance.objects.exclude(state=InstanceState.DECOMMISSIONED)


def claimed_names() -> dict[str, dict[str, set[int]]]:
    """kind → resource name → ids of the pools claiming it (for DNS records: ``{0}``). Six queries."""
    claims: dict[str, dict[str, set[int]]] = {kind: {} for kind in OrphanKind.values}

    def claim(kind, name, pool_id):
        claims[kind].setdefault(name, set()).add(pool_id)

    driver_of: dict[int, object] = {}
    pools = {pool.pk: pool for pool in Pool.objects.all()}

    def driver(pool_id):
        if pool_id not in driver_of:
            try:
                driver_of[pool_id] = drivers.for_pool(pools[pool_id])
            except Exception:  # its SDK missing, say: names are still derived the base way (listing fails too)
                logger.warning("no driver for pool %s; its names are derived the default way", pool_id)
                base = {PoolKind.DATABASE: DatabaseDriver, PoolKind.COMPUTE: ComputeDriver}.get(pools[pool_id].kind)
                driver_of[pool_id] = (base or DatabaseDriver)(pools[pool_id])
        return driver_of[pool_id]

    database_pool_of = {}
    for instance in _live_instances().only("pk", "name", "database_pool_id", "compute_pool_id"):
        claim(OrphanKind.DNS_RECORD, instance.name, 0)
        database_pool, compute_pool = instance.database_pool_id, instance.compute_pool_id
        if database_pool:
            database_pool_of[instance.pk] = database_pool
            claim(OrphanKind.DATABASE, driver(database_pool).database_name(instance), database_pool)
        if compute_pool:
            claim(OrphanKind.DEPLOYMENT, driver(compute_pool).namespace(instance), compute_pool)
    for instance_id, name in InstanceDatabase.objects.values_list("instance_id", "name"):
        if instance_id in database_pool_of:
            claim(OrphanKind.DATABASE, name, database_pool_of[instance_id])
    for instance_id, new, old, dropped in Restore.objects.values_list(
        "instance_id", "new_database", "old_database", "old_dropped_at"
    ):
        if instance_id in database_pool_of:
            for name in (new, old if dropped is None else ""):
                if name:
                    claim(OrphanKind.DATABASE, name, database_pool_of[instance_id])
    for pool_id, name in Share.objects.values_list("pool_id", "name"):
        claim(OrphanKind.SHARE, name, pool_id)
    return claims


def _is_instance_name(name: str) -> bool:
    return bool(re.fullmatch(INSTANCE_NAME_REGEX, name)) and name not in RESERVED_INSTANCE_NAMES


# ---- what the drivers report ------------------------------------------------------------------------------


def _list(pool: Pool) -> list[str]:
    driver = drivers.for_pool(pool)
    lister = {
        PoolKind.DATABASE: lambda: driver.list_databases(),
        PoolKind.STORAGE: lambda: driver.list_shares(),
        PoolKind.COMPUTE: lambda: driver.list_deployments(),
    }[pool.kind]
    return call_with_timeout(lambda _abandoned: lister(), seconds=settings.CELLHUB["HEALTH_DRIVER_TIMEOUT"] * 4,
                             name=f"listing of pool {pool}")


def _dns_groups() -> list[tuple[object, list[Region]]]:
    """One DNS driver per zone the regions use (the local zone file, a hosted zone, …) with its regions."""
    groups: dict[tuple, tuple[object, list[Region]]] = {}
    for region in Region.objects.order_by("pk"):
        driver = drivers.for_dns(region)
        key = (type(driver).__module__, type(driver).__name__, driver.zone)
        groups.setdefault(key, (driver, []))[1].append(region)
    return list(groups.values())


@dataclass
class Pass:
    now: datetime
    listings: dict[int, set[str]] = field(default_factory=dict)  # pool id → names it lists
    unlisted_pools: set[int] = field(default_factory=set)  # pools that could not be listed (or are not listed)
    dns_records: dict[int, set[str]] = field(default_factory=dict)  # first region of each zone → record names
    records_by_region: dict[int, set[str]] = field(default_factory=dict)  # every region → its zone's names
    regions: dict[int, Region] = field(default_factory=dict)
    judged_missing: set[str] = field(default_factory=set)  # keys of the missing-resource checks this pass made
    seen: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    found: dict[str, int] = field(default_factory=dict)


def _record(run: Pass, *, kind, direction, name, detail, pool=None, region=None, instance=None) -> None:
    if direction == OrphanDirection.UNCLAIMED:
        key = f"{kind}:unclaimed:{pool.pk if pool else ''}:{region.pk if region else ''}:{name}"
    else:
        key = _missing_key(kind, instance)
    run.seen.add(key)
    label = f"{kind}/{direction}"
    run.found[label] = run.found.get(label, 0) + 1
    touched = Orphan.objects.filter(key=key, state__in=_OPEN).update(last_seen_at=run.now, detail=detail)
    if touched:
        return
    try:
        with transaction.atomic():
            Orphan.objects.create(
                key=key, kind=kind, direction=direction, resource_name=name, pool=pool, region=region,
                instance=instance, detail=detail, found_at=run.now, last_seen_at=run.now,
            )
    except IntegrityError:
        pass  # a concurrent pass recorded it a moment ago
    logger.warning("reconciler: %s %s %s (%s)", kind, direction, name, detail)


def _unclaimed_resources(run: Pass, pools: list[Pool], claims) -> None:
    pools_by_id = {pool.pk: pool for pool in pools}
    for kind, pool_kind in POOL_KIND_OF.items():
        listed: dict[str, list[Pool]] = {}
        for pool in (p for p in pools if p.kind == pool_kind):
            for name in run.listings.get(pool.pk, ()):
                listed.setdefault(name, []).append(pool)
        for name, listing_pools in sorted(listed.items()):
            claimers = claims[kind].get(name, set())
            providers = {pool.provider for pool in listing_pools}
            claimed = any(pool.pk in claimers for pool in listing_pools) or any(
                pool_id in run.unlisted_pools and pools_by_id[pool_id].provider in providers for pool_id in claimers
            )
            if not claimed:
                also = ", ".join(pool.name for pool in listing_pools[1:])
                others = f" (also listed by {also})" if also else ""
                _record(
                    run, kind=kind, direction=OrphanDirection.UNCLAIMED, name=name, pool=listing_pools[0],
                    region=listing_pools[0].reef.region,
                    detail=f"{name} in pool {listing_pools[0].name}{others} belongs to no instance of the hub",
                )
    for region_id, names in run.dns_records.items():
        region = run.regions[region_id]
        for name in sorted(names):
            if _is_instance_name(name) and name not in claims[OrphanKind.DNS_RECORD]:
                _record(run, kind=OrphanKind.DNS_RECORD, direction=OrphanDirection.UNCLAIMED, name=name,
                        region=region, detail=f"DNS record {name} points at no live instance")


def _missing_key(kind: str, instance: Instance) -> str:
    return f"{kind}:missing:{instance.pk}"


def _missing_resources(run: Pass) -> None:
    busy = set(
        Operation.objects.filter(
            state__in=[str(s) for s in OPERATION_ACTIVE_STATES], instance__isnull=False
        ).values_list("instance_id", flat=True)
    )
    instances = Instance.objects.filter(state__in=COMPLETE_STATES).select_related(
        "database_pool", "compute_pool", "region"
    )
    shares = {
        share.instance_id: share
        for share in Share.objects.filter(instance__state__in=COMPLETE_STATES).select_related("pool")
    }
    switched = dict(InstanceDatabase.objects.values_list("instance_id", "name"))
    labels = {OrphanKind.DATABASE: "database", OrphanKind.SHARE: "share", OrphanKind.DEPLOYMENT: "deployment",
              OrphanKind.DNS_RECORD: "DNS record"}
    for instance in instances:
        if instance.pk in busy:
            continue  # an operation is changing its resources: judged by a later pass
        problems: list[tuple[str, str, Pool | None]] = []

        def judge(kind, problem, pool=None, instance=instance, problems=problems):
            run.judged_missing.add(_missing_key(kind, instance))
            if problem:
                problems.append((kind, problem, pool))

        pool = instance.database_pool
        if pool is None:
            judge(OrphanKind.DATABASE, "it has no database pool")
        elif pool.pk in run.listings:
            name = switched.get(instance.pk) or drivers.for_pool(pool).database_name(instance)
            judge(OrphanKind.DATABASE, name not in run.listings[pool.pk]
                  and f"its database {name} is not in pool {pool.name}", pool)
        share = shares.get(instance.pk)
        if share is None:
            judge(OrphanKind.SHARE, "it has no share")
        elif share.pool_id in run.listings:
            judge(OrphanKind.SHARE, share.name not in run.listings[share.pool_id]
                  and f"its share {share.name} is not in pool {share.pool.name}", share.pool)
        pool = instance.compute_pool
        if pool is None:
            judge(OrphanKind.DEPLOYMENT, "it has no compute pool")
        elif pool.pk in run.listings:
            namespace = drivers.for_pool(pool).namespace(instance)
            judge(OrphanKind.DEPLOYMENT, namespace not in run.listings[pool.pk]
                  and f"its deployment {namespace} is not in pool {pool.name}", pool)
        records = run.records_by_region.get(instance.region_id)
        if records is not None:
            judge(OrphanKind.DNS_RECORD, instance.name not in records and f"its DNS record {instance.name} is missing")
        for kind, problem, at_pool in problems:
            _record(
                run, kind=kind, direction=OrphanDirection.MISSING, name=f"{instance.name} ({labels[kind]})",
                pool=at_pool, region=instance.region, instance=instance,
                detail=f"{instance.name} is {instance.state} but {problem}",
            )


def _resolve_the_rest(run: Pass) -> int:
    """Findings not found again by this pass, where it could judge them, are resolved."""
    resolved = 0
    for orphan in Orphan.objects.filter(state__in=_OPEN).exclude(key__in=run.seen).select_related("instance"):
        if orphan.direction == OrphanDirection.UNCLAIMED:
            if orphan.kind == OrphanKind.DNS_RECORD:
                judged = orphan.region_id is not None and orphan.region_id in run.dns_records
            else:
                judged = orphan.pool_id is not None and orphan.pool_id in run.listings
        else:
            # judged this pass, or the instance no longer has to have its resources (stopped being complete)
            judged = (orphan.key in run.judged_missing or orphan.instance is None
                      or orphan.instance.state not in COMPLETE_STATES)
        if judged:
            resolved += Orphan.objects.filter(pk=orphan.pk, state__in=_OPEN).update(
                state=OrphanState.RESOLVED, closed_at=run.now, note="no longer found by the reconciler"
            )
    return resolved


def reconcile_pass(*, now: datetime | None = None) -> dict:
    """List every pool and DNS zone, record the disagreements, resolve the findings no longer found.

    Deletes nothing. A pool or zone whose listing fails is reported in ``errors`` and judged by nothing in this
    pass (its findings stay as they are). Also recounts the slot counters placement reads (``cells.counters``) and
    the fleet tallies ``/metrics`` reads (``cells.tally``) and reports each that disagrees with its rows, logged as
    an error (it is never corrected silently: staff repair it with ``counters_refill`` or ``tally_refill``).
    Returns ``found`` (counts by kind/direction), ``resolved``, ``errors`` and ``counter_drift``.
    """
    run = Pass(now=now or timezone.now())
    pools = list(Pool.objects.select_related("reef__region").order_by("pk"))
    for pool in pools:
        if pool.status not in LISTED_POOL_STATES:
            run.unlisted_pools.add(pool.pk)
            continue
        try:
            run.listings[pool.pk] = set(_list(pool))
        except Exception as error:  # one pool's trouble never stops the pass
            run.unlisted_pools.add(pool.pk)
            run.errors.append(f"pool {pool.name}: {error.__class__.__name__}: {error}")
            logger.warning("reconciler could not list pool %s: %s", pool.name, error)
    for driver, regions in _dns_groups():
        try:
            names = set(call_with_timeout(lambda _abandoned, d=driver: d.list_records(), name="DNS listing",
                                          seconds=settings.CELLHUB["HEALTH_DRIVER_TIMEOUT"] * 4))
        except Exception as error:
            run.errors.append(f"DNS zone {driver.zone}: {error.__class__.__name__}: {error}")
            continue
        run.dns_records[regions[0].pk] = names  # one zone is judged once, under its first region
        for region in regions:
            run.regions[region.pk] = region
            run.records_by_region[region.pk] = names
    claims = claimed_names()
    _unclaimed_resources(run, pools, claims)
    _missing_resources(run)
    drift = [str(counter) for counter in counters_drift()]
    for line in drift:
        logger.error("slot counter drift: %s", line)
    for line in tally_drift():
        logger.error("tally drift: %s", line)
        drift.append(line)
    return {"found": run.found, "resolved": _resolve_the_rest(run), "errors": run.errors, "counter_drift": drift}


# ---- staff decisions ----------------------------------------------------------------------------------------

_DERIVED = r"(?P<pk>\d+)"


def _derived_pk(name: str, separator: str) -> int | None:
    match = re.fullmatch(rf"{re.escape(resource_prefix())}{separator}i{_DERIVED}(?:_r\d+)?", name)
    return int(match["pk"]) if match else None


def _still_unclaimed(orphan: Orphan) -> bool | None:
    """None: the resource is gone; False: someone claims it now; True: it exists and is still nobody's."""
    claims = claimed_names()
    if orphan.kind == OrphanKind.DNS_RECORD:
        present = orphan.resource_name in drivers.for_dns(orphan.region).list_records()
        return None if not present else orphan.resource_name not in claims[orphan.kind]
    pool = orphan.pool
    if orphan.resource_name not in _list(pool):
        return None
    claimers = claims[orphan.kind].get(orphan.resource_name, set())
    same_provider = set(Pool.objects.filter(pk__in=claimers, provider=pool.provider).values_list("pk", flat=True))
    return not same_provider


def _delete(orphan: Orphan) -> str:
    """Delete the resource through its driver; returns what was done. Raises ``Refused`` for a name the
    driver's interface cannot address, ``DriverError`` when the provider refuses."""
    name = orphan.resource_name
    if orphan.kind == OrphanKind.DNS_RECORD:
        drivers.for_dns(orphan.region).delete_record(name=name)
        return f"DNS record {name} deleted"
    driver = drivers.for_pool(orphan.pool)
    if orphan.kind == OrphanKind.SHARE:
        driver.delete_share(share=Share(pool=orphan.pool, slot=0, name=name))
        return f"share {name} deleted from pool {orphan.pool.name}"
    if orphan.kind == OrphanKind.DEPLOYMENT:
        pk = _derived_pk(name, "-")
        if pk is None or driver.namespace(Instance(pk=pk)) != name:
            raise Refused(f"{name} is not a name the hub derives: delete it by hand in pool {orphan.pool.name}")
        driver.delete(instance=Instance(pk=pk))
        return f"deployment {name} deleted from pool {orphan.pool.name}"
    pk = _derived_pk(name, "_")
    stand_in = Instance(pk=pk or 0)
    derived = pk is not None and driver.database_name(stand_in) == name
    if driver.capabilities.database_switching:
        driver.drop_database(instance=stand_in, database=name, drop_login=derived)
    elif derived:
        driver.drop_database(instance=stand_in)
    else:
        raise Refused(f"the {orphan.pool.provider} driver only drops databases named after an instance: "
                           f"drop {name} by hand")
    return f"database {name} dropped from pool {orphan.pool.name}" + (" with its login" if derived else "")


def orphan_clean(*, orphan: Orphan, confirmed_by) -> str:
    """Delete an unclaimed resource staff confirmed: recorded as confirmed first, then checked again (it must
    still exist and still be nobody's), then deleted through its driver; returns what was done.

    Raises ``Refused`` for a missing-resource finding (flagged, never fixed here) or one no longer open, and
    re-raises a driver's error after recording it (the finding stays confirmed: the clean-up can be repeated).
    A resource gone meanwhile, or claimed meanwhile, is not touched and the finding is resolved.
    """
    if orphan.direction != OrphanDirection.UNCLAIMED:
        raise Refused(f"{orphan} is a missing resource: it is flagged for staff, never cleaned up here")
    now = timezone.now()
    confirmed = Orphan.objects.filter(pk=orphan.pk, state__in=_OPEN).update(
        state=OrphanState.CONFIRMED, confirmed_by=confirmed_by, confirmed_at=now
    )
    if not confirmed:
        orphan.refresh_from_db()
        raise Refused(f"{orphan} is {orphan.state}: there is nothing to clean up", current_state=orphan.state)
    orphan.refresh_from_db()
    try:
        still = _still_unclaimed(orphan)
        if still is None:
            note = f"{orphan.resource_name} was already gone; nothing deleted"
            state = OrphanState.RESOLVED
        elif still is False:
            note = f"{orphan.resource_name} is claimed by the hub now; nothing deleted"
            state = OrphanState.RESOLVED
        else:
            note = _delete(orphan)
            state = OrphanState.CLEANED
    except Exception as error:
        Orphan.objects.filter(pk=orphan.pk).update(error=f"{error.__class__.__name__}: {error}")
        raise
    Orphan.objects.filter(pk=orphan.pk).update(state=state, closed_at=timezone.now(), note=note, error="")
    logger.warning("orphan %s: %s (confirmed by %s)", orphan.pk, note, confirmed_by)
    return note


def orphan_dismiss(*, orphan: Orphan, dismissed_by, reason: str) -> None:
    """Staff decide a finding needs nothing (a resource kept on purpose, a known gap); it stays on record."""
    reason = (reason or "").strip()
    if not reason:
        raise Refused("Say why the finding is dismissed.", field="reason")
    who = dismissed_by.get_username() if dismissed_by is not None else "the hub"
    dismissed = Orphan.objects.filter(pk=orphan.pk, state=OrphanState.OPEN).update(
        state=OrphanState.DISMISSED, closed_at=timezone.now(), note=f"dismissed by {who}: {reason}"
    )
    if not dismissed:
        orphan.refresh_from_db()
        raise Refused(f"{orphan} is {orphan.state}: only an open finding can be dismissed",
                           current_state=orphan.state)

