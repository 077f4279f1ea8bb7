"""Facts for the planner, read from the fleet in a constant number of queries whatever its size.

Seven grouped queries (reefs; pools by reef, kind and provider; failed top-ups; database and compute slots in
use; instances and recent signups by reef; shares by reef), joined in Python into one ``ReefKindFacts`` per
reef in service (active, draining or broken) and pool kind. Free slots follow the rules of placement and
``cells.selectors``: shared (not dedicated), available pools only. Coming slots are the top-ups under way:
shared pools being provisioned, not counting a replacement pool, whose slots its failed pool's shares take.
"""
from __future__ import annotations

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
from cells.models import Instance, Pool, Reef, Share
from cells.thresholds import effective, provider_for, thresholds_for, thresholds_validate
from provisioning.capacity.planner import ReefKindFacts
from provisioning.capacity.thresholds import capacity_settings

logger = logging.getLogger(__name__)

IN_SERVICE_REEF_STATES = (ReefStatus.ACTIVE, ReefStatus.DRAINING, ReefStatus.BROKEN)
KINDS = (PoolKind.DATABASE, PoolKind.STORAGE, PoolKind.COMPUTE)
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
        "slug", "status", "max_instances", "capacity_overrides", "region__slug", "region__status", "region__cloud",
        "dedicated_to__name"))
    if not reefs:
        return []
    ids = [reef.pk for reef in reefs]
    configs = {reef.pk: _reef_config(reef, base) for reef in reefs}
    window_start = {
        reef.pk: now - timedelta(hours=float(configs[reef.pk]["SIGNUP_WINDOW_HOURS"])) for reef in reefs
    }

    # Pools by reef, kind and provider: capacity free for signups, coming, and which provider is newest.
    capacity, coming, newest = defaultdict(int), defaultdict(int), {}
    pools = (
        Pool.objects.filter(reef_id__in=ids)
        .exclude(status=PoolStatus.RETIRED)
        .order_by()
        .values("reef_id", "kind", "provider")
        .annotate(
            placeable=Sum("capacity", filter=_PLACEABLE),
            coming=Sum("capacity", filter=Q(status=PoolStatus.PROVISIONING, dedicated=False, replaces__isnull=True)),
            newest=Max("id"),
        )
    )
    for row in pools:
        key = (row["reef_id"], row["kind"])
        capacity[key] += row["placeable"] or 0
        coming[key] += row["coming"] or 0
        if key not in newest or row["newest"] > newest[key][0]:
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

    # Database and compute slots: instances holding them, in all pools and in the pools signups may take.
    used, used_placeable = defaultdict(int), defaultdict(int)
    for kind, field in ((PoolKind.DATABASE, "database_pool"), (PoolKind.COMPUTE, "compute_pool")):
        rows = (
            Instance.objects.filter(state__in=_HOLDING, **{f"{field}__reef_id__in": ids})
            .order_by()
            .values(f"{field}__reef_id")
            .annotate(
                used=Count("id"),
                placeable=Count(
                    "id", filter=Q(**{f"{field}__status": PoolStatus.AVAILABLE, f"{field}__dedicated": False})
                ),
            )
        )
        for row in rows:
            key = (row[f"{field}__reef_id"], kind)
            used[key], used_placeable[key] = row["used"], row["placeable"]

    # Instances per reef: those holding slots (against max_instances), and the signups of each window in use
    # (reefs share the settings' window unless they override it: one conditional count per distinct window).
    windows = sorted({start for start in window_start.values()})
    holding = Q(state__in=_HOLDING)
    counts = {f"since_{n}": Count("id", filter=Q(created_at__gte=start)) for n, start in enumerate(windows)}
    rows = (
        Instance.objects.filter(reef_id__in=ids)
        .filter(holding | Q(created_at__gte=windows[0]))
        .order_by()
        .values("reef_id")
        .annotate(holding=Count("id", filter=holding), **counts)
    )
    instance_count, signups = defaultdict(int), defaultdict(int)
    for row in rows:
        instance_count[row["reef_id"]] = row["holding"]
        signups[row["reef_id"]] = row[f"since_{windows.index(window_start[row['reef_id']])}"]

    # Shares: free ones signups may take, and those held (assigned, being archived or scrubbed).
    shares = (
        Share.objects.filter(pool__reef_id__in=ids)
        .order_by()
        .values("pool__reef_id")
        .annotate(
            free=Count("id", filter=Q(status=ShareStatus.AVAILABLE, pool__status=PoolStatus.AVAILABLE,
                                      pool__dedicated=False)),
            used=Count("id", filter=Q(status__in=_USED_SHARES)),
        )
    )
    free_shares, used_shares = {}, {}
    for row in shares:
        free_shares[row["pool__reef_id"]], used_shares[row["pool__reef_id"]] = row["free"], row["used"]

    facts = []
    for reef in reefs:
        config = configs[reef.pk]
        for kind in KINDS:
            key = (reef.pk, kind)
            provider = provider_for(
                config, kind=kind, newest_provider=newest.get(key, (0, None))[1], cloud=reef.region.cloud
            )
            if kind == PoolKind.STORAGE:
                free, in_use = free_shares.get(reef.pk, 0), used_shares.get(reef.pk, 0)
            else:
                free, in_use = max(capacity[key] - used_placeable[key], 0), used[key]
            facts.append(
                ReefKindFacts(
                    reef_id=reef.pk,
                    reef=f"{reef.region.slug}/{reef.slug}",
                    region_id=reef.region_id,
                    kind=str(kind),
                    provider=str(provider),
                    reef_status=reef.status,
                    dedicated_to=reef.dedicated_to.name if reef.dedicated_to_id else "",
                    region_status=reef.region.status,
                    max_instances=reef.max_instances,
                    instance_count=instance_count[reef.pk],
                    free=free,
                    used=in_use,
                    coming=coming[key],
                    signups=signups[reef.pk],
                    thresholds=thresholds_for(config, kind=kind, provider=provider),
                    failed_top_ups=tuple(failed_top_ups[key]),
                )
            )
    return facts


def _reef_config(reef: Reef, base: dict) -> dict:
    """The reef's effective settings; overrides that fail validation (written around the admin) are ignored,
    loudly, rather than stopping the pass for every other reef."""
    try:
        thresholds_validate(reef.capacity_overrides)
    except ValidationError as error:
        logger.warning("reef %s: capacity overrides ignored: %s", reef.pk, "; ".join(error.messages))
        return base
    return effective(reef.capacity_overrides, base)
