"""Placement: region → reef → pools → share, taken under row locks so no slot is given twice.

The reef row is the unit of serialisation: a placement locks its reef (``FOR UPDATE``; a reef locked
by another signup is skipped with ``SKIP LOCKED`` while others are free), then counts and takes slots
inside that lock, and takes its share with ``FOR UPDATE SKIP LOCKED``. Reefs place in parallel; one
reef never exceeds ``max_instances`` and no pool exceeds its capacity. The hot path is hand-written SQL
(portable to SQLite, where the lock clauses are dropped because SQLite serialises writers): placement is
on every signup's critical path, and the ORM's compile time for these subqueries cost more than the
database did (see bench/signup.py).
"""
from django.db import connection, transaction

from cells import selectors
from cells.choices import (
    PLACEABLE_POOL_STATES,
    SIGNUP_REGION_STATES,
    SLOT_HOLDING_INSTANCE_STATES,
    PoolKind,
    PoolStatus,
    ReefStatus,
    ShareStatus,
    Tier,
)
from cells.errors import NoCapacity, Refused
from cells.models import Instance, Pool, Reef, Share
from cells.states import SHARE


def region_takes_signups(region) -> bool:
    return region.status in SIGNUP_REGION_STATES


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
    dedicated = {}
    if instance.tier == Tier.DEDICATED:
        with connection.cursor() as cursor:
            for kind, fk in ((PoolKind.DATABASE, "database_pool_id"), (PoolKind.COMPUTE, "compute_pool_id")):
                pool_id = _free_dedicated_pool(cursor, reef.pk, kind, fk)
                dedicated[kind] = Pool.objects.get(pk=pool_id) if pool_id else None
            if not Share.objects.filter(instance=instance).exists():
                _take_dedicated_share(cursor, reef.pk, instance)
    database_pool = (
        instance.database_pool or dedicated.get(PoolKind.DATABASE) or _roomiest_pool(reef, PoolKind.DATABASE)
    )
    compute_pool = instance.compute_pool or dedicated.get(PoolKind.COMPUTE) or _roomiest_pool(reef, PoolKind.COMPUTE)
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


_HOLDING = sorted(str(state) for state in SLOT_HOLDING_INSTANCE_STATES)
_IN_HOLDING = ", ".join(["%s"] * len(_HOLDING))
_PLACED = f"(SELECT COUNT(*) FROM cells_instance i WHERE i.reef_id = r.id AND i.state IN ({_IN_HOLDING}))"


def _pool_with_room(kind: str, fk: str) -> str:
    """SQL for the id of reef r's shared, available ``kind`` pool with the most free slots (NULL if none)."""
    used = f"(SELECT COUNT(*) FROM cells_instance i WHERE i.{fk} = p.id AND i.state IN ({_IN_HOLDING}))"
    return (
        f"(SELECT p.id FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = '{kind}' "
        f"AND p.status = '{PoolStatus.AVAILABLE}' AND NOT p.dedicated AND p.capacity > {used} "
        f"ORDER BY p.capacity - {used} DESC, p.id LIMIT 1)"
    )


# Reef r's instance count and limit, and its roomiest database and compute pools, in one row.
_SLOTS = (
    f"r.id, {_PLACED}, r.max_instances, "
    f"{_pool_with_room(PoolKind.DATABASE, 'database_pool_id')}, {_pool_with_room(PoolKind.COMPUTE, 'compute_pool_id')}"
)
_SLOTS_PARAMS = _HOLDING * 5
_REEFS_WITH_ROOM = (
    f"FROM cells_reef r WHERE r.region_id = %s AND r.status = '{ReefStatus.ACTIVE}' "
    f"AND r.max_instances > {_PLACED} {{exclude}} ORDER BY r.max_instances - {_PLACED} DESC, r.id"
)
# available → assigned is the share state machine's legal change, made here as one conditional UPDATE on the
# first free share nobody else holds: the SKIP LOCKED queue pattern.
_TAKE_SHARE_SQL = (
    "UPDATE cells_share SET status = 'assigned', instance_id = %s WHERE status = 'available' AND id = ("
    "SELECT s.id FROM cells_share s JOIN cells_pool p ON p.id = s.pool_id WHERE p.reef_id = %s "
    f"AND p.status = '{PoolStatus.AVAILABLE}' AND NOT p.dedicated AND s.status = 'available' "
    "ORDER BY s.pool_id, s.slot LIMIT 1{lock}) RETURNING id"
)
assert SHARE.can(ShareStatus.AVAILABLE, ShareStatus.ASSIGNED)
# A dedicated pool serves one instance: it is free only while no instance at all references it (whatever its
# state; a failed provision's release drops the reference) and, for storage, while none of its shares is held,
# archived or scrubbed. Only tier=dedicated instances take one, with their reef locked, so two dedicated
# signups never both take the same pool; the shared path's SQL never sees a dedicated pool.
_FREE_DEDICATED_POOL = (
    "SELECT p.id FROM cells_pool p WHERE p.reef_id = %s AND p.kind = %s "
    f"AND p.status = '{PoolStatus.AVAILABLE}' AND p.dedicated "
    "AND NOT EXISTS (SELECT 1 FROM cells_instance i WHERE i.{fk} = p.id) ORDER BY p.id LIMIT 1"
)
_TAKE_DEDICATED_SHARE_SQL = (
    "UPDATE cells_share SET status = 'assigned', instance_id = %s WHERE status = 'available' AND id = ("
    "SELECT s.id FROM cells_share s JOIN cells_pool p ON p.id = s.pool_id WHERE p.reef_id = %s "
    f"AND p.status = '{PoolStatus.AVAILABLE}' AND p.dedicated AND s.status = 'available' "
    "AND NOT EXISTS (SELECT 1 FROM cells_share o WHERE o.pool_id = p.id "
    "AND (o.instance_id IS NOT NULL OR o.status IN ('archiving', 'scrubbing'))) "
    "ORDER BY s.pool_id, s.slot LIMIT 1{lock}) RETURNING id"
)


def _postgres(cursor) -> bool:
    return cursor.db.vendor == "postgresql"  # SQLite serialises writers; it has no row locks


def _lock_roomiest_free_reef(cursor, region_id: int, tried: list[int]):
    """Lock the roomiest reef of the region that no other placement holds; its slots row, or None."""
    exclude = f"AND r.id NOT IN ({', '.join(['%s'] * len(tried))})" if tried else ""
    lock = " FOR UPDATE OF r SKIP LOCKED" if _postgres(cursor) else ""
    # No lock wait happens here, so the counts read in this statement are current.
    cursor.execute(
        f"SELECT {_SLOTS} {_REEFS_WITH_ROOM.format(exclude=exclude)} LIMIT 1{lock}",
        [*_SLOTS_PARAMS, region_id, *_HOLDING, *tried, *_HOLDING],
    )
    return cursor.fetchone()


def _lock_and_count(cursor, reef_id: int):
    """Wait for the reef's lock, then read its slots in a new statement (a fresh snapshot after the wait)."""
    if _postgres(cursor):
        cursor.execute("SELECT id FROM cells_reef WHERE id = %s FOR UPDATE", [reef_id])
    cursor.execute(f"SELECT {_SLOTS} FROM cells_reef r WHERE r.id = %s", [*_SLOTS_PARAMS, reef_id])
    return cursor.fetchone()


def _free_dedicated_pool(cursor, reef_id: int, kind: str, fk: str) -> int | None:
    cursor.execute(_FREE_DEDICATED_POOL.format(fk=fk), [reef_id, str(kind)])
    row = cursor.fetchone()
    return row[0] if row else None


def _take_dedicated_share(cursor, reef_id: int, instance: Instance) -> bool:
    lock = " FOR UPDATE OF s SKIP LOCKED" if _postgres(cursor) else ""
    cursor.execute(_TAKE_DEDICATED_SHARE_SQL.format(lock=lock), [instance.pk, reef_id])
    return cursor.fetchone() is not None


def _take_slots(cursor, slots, instance: Instance) -> bool:
    """With the reef locked: a database slot, a compute slot and a share for ``instance``, or nothing.

    A tier=dedicated instance takes a free dedicated pool of each kind where the reef has one, and shared
    slots for the rest; a shared instance never sees a dedicated pool.
    """
    reef_id, placed, max_instances, database_pool_id, compute_pool_id = slots
    dedicated = instance.tier == Tier.DEDICATED
    if dedicated:
        database_pool_id = (
            _free_dedicated_pool(cursor, reef_id, PoolKind.DATABASE, "database_pool_id") or database_pool_id
        )
        compute_pool_id = _free_dedicated_pool(cursor, reef_id, PoolKind.COMPUTE, "compute_pool_id") or compute_pool_id
    if placed >= max_instances or database_pool_id is None or compute_pool_id is None:
        return False
    if not (dedicated and _take_dedicated_share(cursor, reef_id, instance)):
        lock = " FOR UPDATE OF s SKIP LOCKED" if _postgres(cursor) else ""
        cursor.execute(_TAKE_SHARE_SQL.format(lock=lock), [instance.pk, reef_id])
        if cursor.fetchone() is None:
            return False
    cursor.execute(
        "UPDATE cells_instance SET reef_id = %s, database_pool_id = %s, compute_pool_id = %s WHERE id = %s",
        [reef_id, database_pool_id, compute_pool_id, instance.pk],
    )
    instance.reef_id, instance.database_pool_id, instance.compute_pool_id = reef_id, database_pool_id, compute_pool_id
    return True


class _NotHere(Exception):
    """This reef cannot take the instance: roll its savepoint back."""


def _attempt(cursor, instance: Instance, lock_reef) -> tuple[int | None, bool]:
    """Lock a reef (``lock_reef`` returns its slots row, or None when there is none) and take slots, in a
    savepoint. When the reef cannot take the instance the savepoint is rolled back, which releases that
    reef's row lock: a placement never holds a reef it gave up on while it waits for another, so two
    placements cannot deadlock. Returns (the reef tried, placed?)."""
    try:
        with transaction.atomic():
            slots = lock_reef()
            if slots is None:
                return None, False
            if _take_slots(cursor, slots, instance):
                return slots[0], True
            raise _NotHere(slots[0])
    except _NotHere as miss:
        return miss.args[0], False


@transaction.atomic
def instance_place(*, instance: Instance) -> None:
    """Give ``instance`` a reef, a database pool, a compute pool and a share; idempotent.

    Raises ``Refused`` (field ``region``) when its region takes no signups and ``NoCapacity`` when no reef has a free
    slot of every kind; in both cases nothing is taken. The common path costs three statements.
    """
    region = instance.region
    if instance.reef_id:  # a retry after a partial release: complete the placement in the same reef
        if is_placed(instance):
            return
        if _place_in(Reef.objects.select_for_update().get(pk=instance.reef_id), instance):
            return
        raise NoCapacity(f"reef {instance.reef} has no room left for what {instance} lacks")
    if not region_takes_signups(region):
        raise Refused(f"region {region.name} is {region.status} and takes no new instances", field="region")
    with connection.cursor() as cursor:
        tried = []
        while True:
            reef_id, placed = _attempt(cursor, instance, lambda: _lock_roomiest_free_reef(cursor, region.pk, tried))
            if placed:
                return
            if reef_id is None:
                break
            tried.append(reef_id)
        # Every reef with room left is either tried or held by another placement: wait our turn on those.
        cursor.execute(f"SELECT r.id {_REEFS_WITH_ROOM.format(exclude='')}", [region.pk, *_HOLDING, *_HOLDING])
        for (reef_id,) in cursor.fetchall():
            if reef_id not in tried and _attempt(cursor, instance, lambda r=reef_id: _lock_and_count(cursor, r))[1]:
                return
    raise NoCapacity(f"no reef in {region.name} has free capacity; we are adding capacity")
