"""Placement: region → reef → pools → share, taken under row locks so no slot is given twice.

The reef row is the unit of serialisation: a placement locks its reef (``FOR UPDATE``; a reef locked
by another signup is skipped with ``SKIP LOCKED`` while others are free), then counts and takes slots
inside that lock, and takes its share with ``FOR UPDATE SKIP LOCKED``. Reefs place in parallel; one
reef never exceeds ``max_instances`` and no pool exceeds its capacity.
"""
from django.db import transaction

from cells import selectors
from cells.choices import (
    PLACEABLE_POOL_STATES,
    PLACEABLE_REEF_STATES,
    SIGNUP_REGION_STATES,
    PoolKind,
    ShareStatus,
)
from cells.models import Instance, Pool, Reef, Share
from cells.states import SHARE


class PlacementError(Exception):
    """The instance cannot be placed; ``field`` names the input at fault for forms and the API."""

    field = None


class RegionClosed(PlacementError):
    field = "region"


class NoCapacity(PlacementError):
    """No reef in the region has a free slot of every kind right now."""


def region_takes_signups(region) -> bool:
    return region.status in SIGNUP_REGION_STATES


def _candidate_reefs(region):
    reefs = Reef.objects.filter(region=region, status__in=list(PLACEABLE_REEF_STATES))
    return list(
        selectors.reefs_with_capacity(reefs)
        .filter(placeable_slots__gt=0)
        .order_by("-placeable_slots", "pk")
        .values_list("pk", flat=True)
    )


def _roomiest_pool(reef, kind):
    pools = Pool.objects.filter(reef=reef, kind=kind, status__in=list(PLACEABLE_POOL_STATES), dedicated=False)
    return (
        selectors.pools_with_usage(pools).filter(free_slots__gt=0).order_by("-free_slots", "pk").first()
    )


def _place_in(reef, instance) -> bool:
    """With ``reef`` locked: take the database slot, compute slot and share ``instance`` lacks, or take nothing."""
    if not instance.reef_id:
        fresh = selectors.reefs_with_capacity(Reef.objects.filter(pk=reef.pk)).get()
        if fresh.placeable_slots <= 0:
            return False
    database_pool = instance.database_pool or _roomiest_pool(reef, PoolKind.DATABASE)
    compute_pool = instance.compute_pool or _roomiest_pool(reef, PoolKind.COMPUTE)
    share = Share.objects.filter(instance=instance).first() or (
        Share.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(
            pool__reef=reef,
            pool__status__in=list(PLACEABLE_POOL_STATES),
            pool__dedicated=False,
            status=ShareStatus.AVAILABLE,
        )
        .order_by("pool_id", "slot")
        .first()
    )
    if database_pool is None or compute_pool is None or share is None:
        return False
    Instance.objects.filter(pk=instance.pk).update(reef=reef, database_pool=database_pool, compute_pool=compute_pool)
    instance.reef, instance.database_pool, instance.compute_pool = reef, database_pool, compute_pool
    if share.instance_id != instance.pk:
        SHARE.change(share, ShareStatus.ASSIGNED, instance=instance)
    return True


def is_placed(instance) -> bool:
    return bool(
        instance.reef_id
        and instance.database_pool_id
        and instance.compute_pool_id
        and Share.objects.filter(instance=instance).exists()
    )


@transaction.atomic
def instance_place(*, instance: Instance) -> None:
    """Give ``instance`` a reef, a database pool, a compute pool and a share; idempotent.

    Raises ``RegionClosed`` when its region takes no signups and ``NoCapacity`` when no reef has a free
    slot of every kind; in both cases nothing is taken.
    """
    if is_placed(instance):
        return
    region = instance.region
    if not region_takes_signups(region):
        raise RegionClosed(f"region {region.name} is {region.status} and takes no new instances")
    if instance.reef_id:  # a retry after a partial release: complete the placement in the same reef
        if _place_in(Reef.objects.select_for_update().get(pk=instance.reef_id), instance):
            return
        raise NoCapacity(f"reef {instance.reef} has no room left for what {instance} lacks")
    skipped = []
    for reef_pk in _candidate_reefs(region):
        reef = Reef.objects.select_for_update(skip_locked=True).filter(pk=reef_pk).first()
        if reef is None:  # another placement holds it: try the next reef first
            skipped.append(reef_pk)
            continue
        if _place_in(reef, instance):
            return
    for reef_pk in skipped:  # every free reef was busy: wait our turn on them
        reef = Reef.objects.select_for_update().get(pk=reef_pk)
        if _place_in(reef, instance):
            return
    raise NoCapacity(f"no reef in {region.name} has free capacity; we are adding capacity")
