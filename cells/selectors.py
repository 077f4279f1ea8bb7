"""Reads of the cell model, capacity first.

Free and used capacity are annotations computed in the database (correlated subqueries), so a
list of any length costs one query, never one per row.
"""
from django.db.models import Case, Count, F, IntegerField, OuterRef, Q, QuerySet, Subquery, Sum, Value, When
from django.db.models.functions import Coalesce, Greatest, Least

from cells.choices import (
    PLACEABLE_POOL_STATES,
    PLACEABLE_REEF_STATES,
    SLOT_HOLDING_INSTANCE_STATES,
    PoolKind,
    ShareStatus,
)
from cells.models import Instance, Pool, Reef, Region, Share

_HOLDING = [str(s) for s in SLOT_HOLDING_INSTANCE_STATES]
_PLACEABLE_POOLS = [str(s) for s in PLACEABLE_POOL_STATES]
_PLACEABLE_REEFS = [str(s) for s in PLACEABLE_REEF_STATES]
_USED_SHARE_STATES = [ShareStatus.ASSIGNED, ShareStatus.ARCHIVING, ShareStatus.SCRUBBING]


def _count(queryset: QuerySet, group_by: str):
    """An integer subquery counting ``queryset`` rows per ``group_by`` value (0 when none)."""
    counted = queryset.order_by().values(group_by).annotate(total=Count("pk")).values("total")
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def _sum(queryset: QuerySet, group_by: str, field: str):
    summed = queryset.order_by().values(group_by).annotate(total=Sum(field)).values("total")
    return Coalesce(Subquery(summed, output_field=IntegerField()), Value(0))


def pools_with_usage(queryset: QuerySet | None = None) -> QuerySet:
    """Pools annotated with ``used_slots`` and ``free_slots``.

    Database and compute pools count the slot-holding instances placed on them; storage pools count
    their shares in use and, as free, their available shares. A pool that is not available has no
    free slots, whatever its size.
    """
    queryset = Pool.objects.all() if queryset is None else queryset
    holding = Instance.objects.filter(state__in=_HOLDING)
    used_database = _count(holding.filter(database_pool=OuterRef("pk")), "database_pool")
    used_compute = _count(holding.filter(compute_pool=OuterRef("pk")), "compute_pool")
    used_shares = _count(Share.objects.filter(pool=OuterRef("pk"), status__in=_USED_SHARE_STATES), "pool")
    available_shares = _count(Share.objects.filter(pool=OuterRef("pk"), status=ShareStatus.AVAILABLE), "pool")
    return queryset.annotate(
        used_slots=Case(
            When(kind=PoolKind.DATABASE, then=used_database),
            When(kind=PoolKind.COMPUTE, then=used_compute),
            default=used_shares,
            output_field=IntegerField(),
        ),
        free_slots=Case(
            When(~Q(status__in=_PLACEABLE_POOLS), then=Value(0)),
            When(kind=PoolKind.STORAGE, then=available_shares),
            default=Greatest(F("capacity") - F("used_slots"), Value(0)),
            output_field=IntegerField(),
        ),
    )


def reefs_with_capacity(queryset: QuerySet | None = None) -> QuerySet:
    """Reefs annotated with ``instance_count``, ``free_instance_slots`` and free slots per pool kind.

    Free slots per kind count shared (not dedicated) available pools only: what a new signup could
    take. ``placeable_slots`` is the least of them: how many more instances the reef could place now.
    """
    queryset = Reef.objects.all() if queryset is None else queryset
    shared_pools = Pool.objects.filter(reef=OuterRef("pk"), status__in=_PLACEABLE_POOLS, dedicated=False)
    holding = Instance.objects.filter(reef=OuterRef("pk"), state__in=_HOLDING)

    def free_in(kind: str, pool_field: str):
        capacity = _sum(shared_pools.filter(kind=kind), "reef", "capacity")
        used = _count(
            holding.filter(**{f"{pool_field}__status__in": _PLACEABLE_POOLS, f"{pool_field}__dedicated": False}),
            "reef",
        )
        return Greatest(capacity - used, Value(0))

    free_shares = _count(
        Share.objects.filter(
            pool__reef=OuterRef("pk"),
            pool__status__in=_PLACEABLE_POOLS,
            pool__dedicated=False,
            status=ShareStatus.AVAILABLE,
        ),
        "pool__reef",
    )
    return queryset.annotate(
        instance_count=_count(holding, "reef"),
        free_instance_slots=Greatest(F("max_instances") - F("instance_count"), Value(0)),
        free_database_slots=free_in(PoolKind.DATABASE, "database_pool"),
        free_compute_slots=free_in(PoolKind.COMPUTE, "compute_pool"),
        free_storage_slots=free_shares,
        placeable_slots=Least(
            F("free_instance_slots"), F("free_database_slots"), F("free_compute_slots"), F("free_storage_slots")
        ),
    )


def regions_with_capacity(queryset: QuerySet | None = None) -> QuerySet:
    """Regions annotated with ``reef_count``, ``instance_count`` and ``free_instance_slots`` of active reefs."""
    queryset = Region.objects.all() if queryset is None else queryset
    active_reefs = Reef.objects.filter(region=OuterRef("pk"), status__in=_PLACEABLE_REEFS)
    holding = Instance.objects.filter(region=OuterRef("pk"), state__in=_HOLDING)
    return queryset.annotate(
        reef_count=_count(Reef.objects.filter(region=OuterRef("pk")), "region"),
        instance_count=_count(holding, "region"),
        active_capacity=_sum(active_reefs, "region", "max_instances"),
        instances_in_active_reefs=_count(
            holding.filter(reef__status__in=_PLACEABLE_REEFS), "region"
        ),
        free_instance_slots=Greatest(F("active_capacity") - F("instances_in_active_reefs"), Value(0)),
    )


def reef_instance_count(*, reef: Reef) -> int:
    """How many slot-holding instances (every state but decommissioned) the reef holds."""
    return Instance.objects.filter(reef=reef, state__in=_HOLDING).count()
