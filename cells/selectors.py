"""Reads of the cell model, capacity first.

Free and used capacity are annotations computed in the database from the slot counters the database keeps
(``cells.counters``), so a list of any length costs one query, never one per row, and never a count of the fleet.
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
from cells.models import Pool, Reef, Region

_HOLDING = [str(s) for s in SLOT_HOLDING_INSTANCE_STATES]
_PLACEABLE_POOLS = [str(s) for s in PLACEABLE_POOL_STATES]
_PLACEABLE_REEFS = [str(s) for s in PLACEABLE_REEF_STATES]
_USED_SHARE_STATES = [ShareStatus.ASSIGNED, ShareStatus.ARCHIVING, ShareStatus.SCRUBBING]


def _sum(queryset: QuerySet, group_by: str, field):
    summed = queryset.order_by().values(group_by).annotate(total=Sum(field)).values("total")
    return Coalesce(Subquery(summed, output_field=IntegerField()), Value(0))


def _count(queryset: QuerySet, group_by: str):
    """An integer subquery counting ``queryset`` rows per ``group_by`` value (0 when none)."""
    counted = queryset.order_by().values(group_by).annotate(total=Count("pk")).values("total")
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def pools_with_usage(queryset: QuerySet | None = None) -> QuerySet:
    """Pools annotated with ``used_slots`` and ``free_slots``, from the pools' own slot counters (no count of the
    fleet: the cost is the pools', whatever the number of instances).

    Database and compute pools count the slot-holding instances placed on them; storage pools count
    their shares in use and, as free, their available shares. A pool that is not available has no
    free slots, whatever its size.
    """
    queryset = Pool.objects.all() if queryset is None else queryset
    return queryset.annotate(
        used_slots=F("slots_held"),
        free_slots=Case(
            When(~Q(status__in=_PLACEABLE_POOLS), then=Value(0)),
            When(kind=PoolKind.STORAGE, then=F("shares_available")),
            default=Greatest(F("capacity") - F("slots_held"), Value(0)),
            output_field=IntegerField(),
        ),
    )


def reefs_with_capacity(queryset: QuerySet | None = None) -> QuerySet:
    """Reefs annotated with ``instance_count``, ``free_instance_slots`` and free slots per pool kind, from the slot
    counters of the reef and its pools (the cost grows with pools, not instances).

    Free slots per kind count shared (not dedicated) available pools only: what a new signup could
    take. ``placeable_slots`` is the least of them: how many more instances the reef could place now.
    """
    queryset = Reef.objects.all() if queryset is None else queryset
    shared_pools = Pool.objects.filter(reef=OuterRef("pk"), status__in=_PLACEABLE_POOLS, dedicated=False)

    def free_in(kind: str):
        return Greatest(_sum(shared_pools.filter(kind=kind), "reef", F("capacity") - F("slots_held")), Value(0))

    return queryset.annotate(
        instance_count=F("placed_instances"),
        free_instance_slots=Greatest(F("max_instances") - F("placed_instances"), Value(0)),
        free_database_slots=free_in(PoolKind.DATABASE),
        free_compute_slots=free_in(PoolKind.COMPUTE),
        free_storage_slots=_sum(shared_pools.filter(kind=PoolKind.STORAGE), "reef", "shares_available"),
        placeable_slots=Least(
            F("free_instance_slots"), F("free_database_slots"), F("free_compute_slots"), F("free_storage_slots")
        ),
    )


def regions_with_capacity(queryset: QuerySet | None = None) -> QuerySet:
    """Regions annotated with ``reef_count``, ``instance_count`` (slot-holding instances placed in its reefs) and
    ``free_instance_slots`` of active reefs, from the reefs' counters."""
    queryset = Region.objects.all() if queryset is None else queryset
    reefs = Reef.objects.filter(region=OuterRef("pk"))
    active_reefs = reefs.filter(status__in=_PLACEABLE_REEFS)
    return queryset.annotate(
        reef_count=_count(reefs, "region"),
        instance_count=_sum(reefs, "region", "placed_instances"),
        active_capacity=_sum(active_reefs, "region", "max_instances"),
        instances_in_active_reefs=_sum(active_reefs, "region", "placed_instances"),
        free_instance_slots=Greatest(F("active_capacity") - F("instances_in_active_reefs"), Value(0)),
    )


def reef_instance_count(*, reef: Reef) -> int:
    """How many slot-holding instances (every state but decommissioned) the reef holds: its counter, read fresh."""
    return Reef.objects.filter(pk=reef.pk).values_list("placed_instances", flat=True).get()
