"""Facts for the planner, read in a constant number of queries whose cost does not grow with the fleet.

Four queries (reefs, with their slot counter; pools by reef, kind and provider, with theirs; failed top-ups; recent
signups by reef, through the index on ``created_at``), joined in Python into one ``ReefKindFacts`` per reef in
service (active, draining or broken) and pool kind; whether each kind's provider can give a new pool a host of its
own in the reef's region is the driver's answer (``new_host_refusal``), asked once per provider and cloud, no query.
Slots in use are the counters the database keeps (``cells.counters``): no count of instances or shares. Free slots
follow the rules of placement and ``cells.selectors``: shared (not dedicated), available pools only. Coming slots are
the top-ups under way: shared pools being provisioned, not counting a replacement pool, whose slots its failed pool's
shares take.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db.models import Count, Max, Q, Sum
from django.utils import timezone

from cells.choices import (
    OPERATION_RETRYABLE_STATES,
    SLOT_HOLDING_INSTANCE_STATES,
    OperationKind,
    PoolKind,
    PoolStatus,
    ReefStatus,
    ShareStatus,
)
from cells.models import Instance, Pool, Reef
from cells.thresholds import effective, provider_for, thresholds_for, thresholds_validate
from provisioning import drivers
from provisioning.capacity.planner import ReefKindFacts
from provisioning.capacity.thresholds import capacity_settings

logger = logging.getLogger(__name__)

IN_SERVICE_REEF_STATES = (ReefStatus.ACTIVE, ReefStatus.DRAINING, ReefStatus.BROKEN)
KINDS = (PoolKind.DATABASE, PoolKind.STORAGE, PoolKind.COMPUTE)
KIND_NAMES = tuple(str(kind) for kind in KINDS)  # plain strings: hashed in C, not by the enum's __hash__
_HOLDING = [str(state) for state in SLOT_HOLDING_INSTANCE_STATES]
_USED_SHARES = [ShareStatus.ASSIGNED, ShareStatus.ARCHIVING, ShareStatus.SCRUBBING]
_PLACEABLE = Q(status=PoolStatus.AVAILABLE, dedicated=False)


def gather_facts(*, reef_ids: list[int] | None = None, now=None) -> list[ReefKindFacts]:
    """One ``ReefKindFacts`` per in-service reef (all of them, or those of ``reef_ids``) and pool kind."""
    now = now or timezone.now()
    base = capacity_settings()
    reefs = Reef.objects.filter(status__in=IN_SERVICE_REEF_STATES).select_related("region").order_by(
        "region__slug", "slug"
    )
    if reef_ids is not None:
        reefs = reefs.filter(pk__in=reef_ids)
    reefs = list(reefs.select_related("dedicated_to").only(
        "slug", "status", "max_instances", "placed_instances", "capacity_overrides", "region__slug", "region__status",
        "region__cloud", "dedicated_to__name"))
    if not reefs:
        return []
    ids = [reef.pk for reef in reefs]
    # Reefs with the same overrides (most have none) share one effective config and its thresholds: the work per
    # reef is then a few dictionary lookups.
    by_overrides: dict[str, dict] = {}
    configs = {}
    for reef in reefs:
        overrides = json.dumps(reef.capacity_overrides, sort_keys=True, default=str)
        if overrides not in by_overrides:
            by_overrides[overrides] = _reef_config(reef, base)
        configs[reef.pk] = by_overrides[overrides]
    thresholds: dict[tuple[int, str, str], object] = {}
    window_start = {
        reef.pk: now - timedelta(hours=float(configs[reef.pk]["SIGNUP_WINDOW_HOURS"])) for reef in reefs
    }

    # Pools by reef, kind and provider: capacity free for signups, coming, which provider is newest, and the slots
    # held, from the pools' slot counters (the database keeps them: no count of instances or shares here).
    capacity, coming, newest = defaultdict(int), defaultdict(int), {}
    used, used_placeable, free_shares = defaultdict(int), defaultdict(int), defaultdict(int)
    pools = (
        Pool.objects.filter(reef_id__in=ids)
        .order_by()
        .values("reef_id", "kind", "provider")
        .annotate(
            placeable=Sum("capacity", filter=_PLACEABLE),
            coming=Sum("capacity", filter=Q(status=PoolStatus.PROVISIONING, dedicated=False, replaces__isnull=True)),
            newest=Max("id", filter=~Q(status=PoolStatus.RETIRED)),
            held=Sum("slots_held"),
            held_placeable=Sum("slots_held", filter=_PLACEABLE),
            shares_free=Sum("shares_available", filter=_PLACEABLE),
        )
    )
    for row in pools:
        key = (row["reef_id"], row["kind"])
        capacity[key] += row["placeable"] or 0
        coming[key] += row["coming"] or 0
        # Database and compute pools hold one slot per slot-holding instance; storage pools one per share in use.
        used[key] += row["held"] or 0
        used_placeable[key] += row["held_placeable"] or 0
        free_shares[key] += row["shares_free"] or 0
        if row["newest"] is not None and (key not in newest or row["newest"] > newest[key][0]):
            newest[key] = (row["newest"], row["provider"])

    # Pools whose top-up failed: their kind gets no new order until staff retry or retire them.
    failed_top_ups = defaultdict(list)
    failed = (
        Pool.objects.filter(
            reef_id__in=ids,
            status=PoolStatus.FAILED,
            operations__kind=OperationKind.TOP_UP,
            operations__state__in=sorted(str(state) for state in OPERATION_RETRYABLE_STATES),
        )
        .order_by("name")
        .values_list("reef_id", "kind", "name")
        .distinct()
    )
    for reef_id, kind, name in failed:
        failed_top_ups[(reef_id, kind)].append(name)

    # Signups of each window in use, per reef (reefs share the settings' window unless they override it: one
    # conditional count per distinct window), read through the index on created_at: the recent instances only.
    windows = sorted({start for start in window_start.values()})
    counts = {f"since_{n}": Count("id", filter=Q(created_at__gte=start)) for n, start in enumerate(windows)}
    rows = (
        Instance.objects.filter(reef_id__in=ids, created_at__gte=windows[0])
        .order_by()
        .values("reef_id")
        .annotate(**counts)
    )
    signups = defaultdict(int)
    for row in rows:
        signups[row["reef_id"]] = row[f"since_{windows.index(window_start[row['reef_id']])}"]

    refusals: dict[tuple[str, str], str] = {}
    facts = []
    for reef in reefs:
        config = configs[reef.pk]
        for kind in KIND_NAMES:
            key = (reef.pk, kind)
            provider = str(provider_for(
                config, kind=kind, newest_provider=newest.get(key, (0, None))[1], cloud=reef.region.cloud
            ))
            if (provider, reef.region.cloud) not in refusals:
                refusals[(provider, reef.region.cloud)] = _new_host_refusal(provider, reef.region.cloud)
            rule = (id(config), kind, provider)
            if rule not in thresholds:
                thresholds[rule] = thresholds_for(config, kind=kind, provider=provider)
            if kind == PoolKind.STORAGE:
                free, in_use = free_shares[key], used[key]
            else:
                free, in_use = max(capacity[key] - used_placeable[key], 0), used[key]
            facts.append(
                ReefKindFacts(
                    reef_id=reef.pk,
                    reef=f"{reef.region.slug}/{reef.slug}",
                    region_id=reef.region_id,
                    kind=kind,
                    provider=provider,
                    reef_status=reef.status,
                    dedicated_to=reef.dedicated_to.name if reef.dedicated_to_id else "",
                    region_status=reef.region.status,
                    max_instances=reef.max_instances,
                    instance_count=reef.placed_instances,
                    free=free,
                    used=in_use,
                    coming=coming[key],
                    signups=signups[reef.pk],
                    thresholds=thresholds[rule],
                    failed_top_ups=tuple(failed_top_ups[key]),
                    new_host_refusal=refusals[(provider, reef.region.cloud)],
                )
            )
    return facts


def _new_host_refusal(provider: str, cloud: str) -> str:
    """Why ``provider`` cannot give a new pool a host of its own in a ``cloud`` region ("" when it can)."""
    try:
        return drivers.driver_class(provider).new_host_refusal(cloud=cloud)
    except drivers.PermanentDriverError as error:  # a provider no driver declares
        return str(error)


def _reef_config(reef: Reef, base: dict) -> dict:
    """The reef's effective settings; overrides that fail validation (written around the admin) are ignored,
    loudly, rather than stopping the pass for every other reef."""
    try:
        thresholds_validate(reef.capacity_overrides)
    except ValidationError as error:
        logger.warning("reef %s: capacity overrides ignored: %s", reef.pk, "; ".join(error.messages))
        return base
    return effective(reef.capacity_overrides, base)
