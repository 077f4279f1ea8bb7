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
from typing import NamedTuple

from django.core.exceptions import ValidationError
from django.db.models import Count, Max, OuterRef, Q, Subquery, Sum
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
    # Plain rows, not models: the page and the pass read every reef in service, and a model per reef (and one per
    # region) costs more than everything else done for it here.
    reefs = Reef.objects.filter(status__in=IN_SERVICE_REEF_STATES).order_by("region__slug", "slug")
    if reef_ids is not None:
        reefs = reefs.filter(pk__in=reef_ids)
    # The name of a dedicated reef's instance by a lookup per reef (by primary key, none for a shared reef): a join
    # would have PostgreSQL hash the whole instance table for the few reefs that have one.
    dedicated_to = Subquery(Instance.objects.filter(pk=OuterRef("dedicated_to_id")).order_by().values("name")[:1])
    reefs = [_ReefRow(*row) for row in reefs.annotate(dedicated_name=dedicated_to).values_list(
        "id", "slug", "status", "max_instances", "placed_instances", "capacity_overrides", "region_id",
        "region__slug", "region__status", "region__cloud", "dedicated_name")]
    if not reefs:
        return []
    # The other queries select the same reefs: by their ids when asked for some, else by the same condition (a
    # join on the small reef table rather than a list of every reef's id to send and bind).
    if reef_ids is not None:
        of_reefs = {"reef_id__in": [reef.pk for reef in reefs]}
    else:
        of_reefs = {"reef__status__in": IN_SERVICE_REEF_STATES}
    # Reefs with the same overrides (most have none) share one effective config and its thresholds: the work per
    # reef is then a few dictionary lookups.
    by_overrides: dict[str, dict] = {}
    configs = {}
    for reef in reefs:
        overrides = json.dumps(reef.capacity_overrides, sort_keys=True, default=str) if reef.capacity_overrides else ""
        if overrides not in by_overrides:
            by_overrides[overrides] = _reef_config(reef, base)
        configs[reef.pk] = by_overrides[overrides]
    thresholds: dict[tuple[int, str, str], object] = {}
    starts = {id(config): now - timedelta(hours=float(config["SIGNUP_WINDOW_HOURS"]))
              for config in by_overrides.values()}
    window_start = {reef.pk: starts[id(configs[reef.pk])] for reef in reefs}

    # Pools by reef, kind and provider: capacity free for signups, coming, which provider is newest, and the slots
    # held, from the pools' slot counters (the database keeps them: no count of instances or shares here).
    capacity, coming, newest = defaultdict(int), defaultdict(int), {}
    used, used_placeable, free_shares = defaultdict(int), defaultdict(int), defaultdict(int)
    pools = (
        Pool.objects.filter(**of_reefs)
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
        .values_list("reef_id", "kind", "provider", "placeable", "coming", "newest", "held", "held_placeable",
                     "shares_free")
    )
    for reef_id, kind, provider, placeable, coming_slots, newest_id, held, held_placeable, shares_free in pools:
        key = (reef_id, kind)
        capacity[key] += placeable or 0
        coming[key] += coming_slots or 0
        # Database and compute pools hold one slot per slot-holding instance; storage pools one per share in use.
        used[key] += held or 0
        used_placeable[key] += held_placeable or 0
        free_shares[key] += shares_free or 0
        if newest_id is not None and (key not in newest or newest_id > newest[key][0]):
            newest[key] = (newest_id, provider)

    # Pools whose top-up failed: their kind gets no new order until staff retry or retire them.
    failed_top_ups = defaultdict(list)
    failed = (
        Pool.objects.filter(
            **of_reefs,
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
    # Every reef's recent instances when asked for all (no join to the reefs: those not in service are dropped
    # here), the given reefs' otherwise.
    of_instances = of_reefs if reef_ids is not None else {"reef_id__isnull": False}
    rows = (
        Instance.objects.filter(**of_instances, created_at__gte=windows[0])
        .order_by()
        .values("reef_id")
        .annotate(**counts)
    )
    column = {start: f"since_{n}" for n, start in enumerate(windows)}
    signups = {row["reef_id"]: row[column[window_start[row["reef_id"]]]] for row in rows
               if row["reef_id"] in window_start}

    refusals: dict[tuple[str, str], str] = {}
    facts = []
    for reef in reefs:
        config = configs[reef.pk]
        label = f"{reef.region_slug}/{reef.slug}"
        cloud = reef.region_cloud
        for kind in KIND_NAMES:
            key = (reef.pk, kind)
            provider = str(provider_for(
                config, kind=kind, newest_provider=newest.get(key, (0, None))[1], cloud=cloud
            ))
            if (provider, cloud) not in refusals:
                refusals[(provider, cloud)] = _new_host_refusal(provider, cloud)
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
                    reef=label,
                    region_id=reef.region_id,
                    kind=kind,
                    provider=provider,
                    reef_status=reef.status,
                    dedicated_to=reef.dedicated_to or "",
                    region_status=reef.region_status,
                    max_instances=reef.max_instances,
                    instance_count=reef.placed_instances,
                    free=free,
                    used=in_use,
                    coming=coming[key],
                    signups=signups.get(reef.pk, 0),
                    thresholds=thresholds[rule],
                    failed_top_ups=tuple(failed_top_ups.get(key, ())),
                    new_host_refusal=refusals[(provider, cloud)],
                )
            )
    return facts


def _new_host_refusal(provider: str, cloud: str) -> str:
    """Why ``provider`` cannot give a new pool a host of its own in a ``cloud`` region ("" when it can)."""
    try:
        return drivers.driver_class(provider).new_host_refusal(cloud=cloud)
    except drivers.PermanentDriverError as error:  # a provider no driver declares
        return str(error)


class _ReefRow(NamedTuple):
    """What the facts need of a reef, read as a plain row."""

    pk: int
    slug: str
    status: str
    max_instances: int
    placed_instances: int
    capacity_overrides: dict
    region_id: int
    region_slug: str
    region_status: str
    region_cloud: str
    dedicated_to: str | None  # the name of the instance a dedicated reef holds


def _reef_config(reef: _ReefRow, base: dict) -> dict:
    """The reef's effective settings; overrides that fail validation (written around the admin) are ignored,
    loudly, rather than stopping the pass for every other reef."""
    try:
        thresholds_validate(reef.capacity_overrides)
    except ValidationError as error:
        logger.warning("reef %s: capacity overrides ignored: %s", reef.pk, "; ".join(error.messages))
        return base
    return effective(reef.capacity_overrides, base)
