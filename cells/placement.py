"""Placement: region → reef → pools → share, taken under row locks so no slot is given twice.

The reef row is the unit of serialisation: a placement locks its reef (``FOR UPDATE``; a reef locked
by another signup is skipped with ``SKIP LOCKED`` while others are free), then counts and takes slots
inside that lock, and takes its share with ``FOR UPDATE SKIP LOCKED``. Reefs place in parallel; one
reef never exceeds ``max_instances`` and no pool exceeds its capacity. The hot path is hand-written SQL
(portable to SQLite, where the lock clauses are dropped because SQLite serialises writers): placement is
on every signup's critical path, and the ORM's compile time for these subqueries cost more than the
database did (see bench/signup.py). On PostgreSQL a shared instance — the common case — is placed by one call of a
server-side function (migrations 0014 and 0017): one round trip, no statement planned per placement, its savepoint
inside the server, the region's reefs walked roomiest first one at a time (bench/fleet.py measures it against the
bare SQL allocation at 1,000 to 100,000 instances).
"""
from django.db import IntegrityError, connection, transaction

from cells import selectors
from cells.audit import audit_record
from cells.choices import (
    PLACEABLE_POOL_STATES,
    SIGNUP_REGION_STATES,
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


_SIGNUP_REGIONS = ", ".join(f"'{state}'" for state in sorted(str(s) for s in SIGNUP_REGION_STATES))


def _pool_with_room(kind: str) -> str:
    """SQL for the id of reef r's shared, available ``kind`` pool with the most free slots (NULL if none), read from
    the pools' slot counters: a handful of pool rows, whatever the number of instances."""
    return (
        f"(SELECT p.id FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = '{kind}' "
        f"AND p.status = '{PoolStatus.AVAILABLE}' AND NOT p.dedicated AND p.slots_held < p.capacity "
        "ORDER BY p.capacity - p.slots_held DESC, p.id LIMIT 1)"
    )


# Reef r's instance count and limit, and its roomiest database and compute pools, in one row.
_SLOTS = (
    f"r.id, r.placed_instances, r.max_instances, "
    f"{_pool_with_room(PoolKind.DATABASE)}, {_pool_with_room(PoolKind.COMPUTE)}"
)
# A shared instance fits a reef with a free slot of every kind; a dedicated one may take dedicated pools instead,
# so for it only the reef's own limit decides which reefs are tried.
_FITS_SHARED = (
    f"AND EXISTS {_pool_with_room(PoolKind.DATABASE)} AND EXISTS {_pool_with_room(PoolKind.COMPUTE)} "
    f"AND EXISTS (SELECT 1 FROM cells_pool p WHERE p.reef_id = r.id AND p.kind = '{PoolKind.STORAGE}' "
    f"AND p.status = '{PoolStatus.AVAILABLE}' AND NOT p.dedicated AND p.shares_available > 0) "
)
# Roomiest first by instance slots; the order is index reef_roomiest_active's, so the walk stops at the first fit.
_REEFS_WITH_ROOM = (
    f"FROM cells_reef r WHERE r.region_id = %s AND r.status = '{ReefStatus.ACTIVE}' AND r.dedicated_to_id IS NULL "
    "AND r.placed_instances < r.max_instances {fits}{exclude}"
    f"AND EXISTS (SELECT 1 FROM cells_region g WHERE g.id = r.region_id AND g.status IN ({_SIGNUP_REGIONS})) "
    "ORDER BY r.max_instances - r.placed_instances DESC, r.id"
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


def _exclude(tried: list[int]) -> str:
    return f"AND r.id NOT IN ({', '.join(['%s'] * len(tried))}) " if tried else ""


def _fits(instance: Instance) -> str:
    return "" if instance.tier == Tier.DEDICATED else _FITS_SHARED


def _lock_roomiest_free_reef(cursor, instance: Instance, tried: list[int]):
    """Lock the roomiest reef of the instance's region that no other placement holds; its slots row, or None."""
    lock = " FOR UPDATE OF r SKIP LOCKED" if _postgres(cursor) else ""
    # No lock wait happens here, so the counters read in this statement are current (and the check constraints
    # refuse the rare stale read: see _attempt).
    cursor.execute(
        f"SELECT {_SLOTS} {_REEFS_WITH_ROOM.format(fits=_fits(instance), exclude=_exclude(tried))} LIMIT 1{lock}",
        [instance.region_id, *tried],
    )
    return cursor.fetchone()


def _lock_and_count(cursor, reef_id: int):
    """Wait for the reef's lock, then read its slots in a new statement (a fresh snapshot after the wait)."""
    if _postgres(cursor):
        cursor.execute("SELECT id FROM cells_reef WHERE id = %s FOR UPDATE", [reef_id])
    cursor.execute(f"SELECT {_SLOTS} FROM cells_reef r WHERE r.id = %s", [reef_id])
    return cursor.fetchone()


# The common case on PostgreSQL, a shared instance: the server-side function (migrations 0014, 0017) locks the roomiest
# reef nobody holds that has a free slot of every kind (read from the counters), takes its first free share and points
# the instance at the reef and its roomiest pools, in one round trip with its plan cached by the session. Its own block
# is the savepoint: when that reef cannot take the instance after all, or a check constraint refuses a slot counted from
# a stale snapshot, the block is rolled back (the reef's lock with it) and the caller's transaction stays usable. Its
# rules are those of _REEFS_WITH_ROOM and _TAKE_SHARE_SQL, frozen in the migration (change both together).
_PLACE_SHARED_SQL = "SELECT * FROM cells_place_shared(%s, %s, %s::bigint[])"


def _place_shared(cursor, instance: Instance, tried: list[int]) -> tuple[int | None, bool]:
    """One statement: lock a reef and take its slots (see _PLACE_SHARED_SQL). Returns (the reef tried, placed?),
    (None, False) when no reef with room is free; raises ``_Stale`` when the counters read were stale."""
    cursor.execute(_PLACE_SHARED_SQL, [instance.region_id, instance.pk, tried])
    reef_id, database_pool_id, compute_pool_id, outcome = cursor.fetchone()
    if outcome == "stale":
        raise _Stale
    if outcome != "placed":
        return reef_id, False
    instance.reef_id, instance.database_pool_id, instance.compute_pool_id = reef_id, database_pool_id, compute_pool_id
    return reef_id, True


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


# The check constraints that refuse an over-full reef or pool (cells.models); placement treats them as "not here".
_FULL = ("reef_placed_within_limit", "pool_held_within_capacity")
_MAX_STALE_RETRIES = 3


def _attempt(cursor, instance: Instance, lock_reef) -> tuple[int | None, bool]:
    """Lock a reef and take slots, in a savepoint. ``lock_reef`` returns the reef's slots row (or None when there is
    none) for ``_take_slots``. When the reef cannot take the instance the savepoint is rolled back, which releases
    that reef's row lock: a placement never holds a reef it gave up on while it waits for another, so two placements
    cannot deadlock. Returns (the reef tried, placed?); raises ``_Stale`` when a check constraint refused a slot
    counted from a stale snapshot."""
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
    except IntegrityError as error:
        # A counter read before a concurrent placement committed: the database refused the over-full slot and
        # the savepoint gave everything back. Read again.
        if any(name in str(error) for name in _FULL):
            raise _Stale from error
        raise


class _Stale(Exception):
    """A check constraint refused a slot chosen from counters another placement had just changed."""


def _region_refusal(instance: Instance) -> None:
    region = instance.region
    if not region_takes_signups(region):
        raise Refused(f"region {region.name} is {region.status} and takes no new instances", field="region")


def instance_place(*, instance: Instance) -> None:
    """Give ``instance`` a reef, a database pool, a compute pool and a share; idempotent.

    Raises ``Refused`` (field ``region``) when its region takes no signups and ``NoCapacity`` when no reef has a free
    slot of every kind; in both cases nothing is taken. The common path (a shared instance on PostgreSQL, inside
    the caller's transaction) is one statement, its savepoint inside the server, reading the slot counters: its cost
    does not grow with the fleet.
    """
    if instance.reef_id:  # a retry after a partial release: complete the placement in the same reef
        with transaction.atomic():
            _region_refusal(instance)
            if is_placed(instance):
                return
            if _place_in(Reef.objects.select_for_update().get(pk=instance.reef_id), instance):
                return
            raise NoCapacity(f"reef {instance.reef} has no room left for what {instance} lacks")
    # Each attempt takes everything or nothing in a savepoint of its own, so no savepoint of ours is needed around
    # them when the caller holds a transaction (and a refusal leaves the caller's transaction usable).
    if connection.in_atomic_block:
        _place_new(instance)
    else:
        with transaction.atomic():
            _place_new(instance)


def _place_new(instance: Instance) -> None:
    for retry in range(_MAX_STALE_RETRIES + 1):
        try:
            if _place_anywhere(instance):
                return
            break
        except _Stale:
            if retry == _MAX_STALE_RETRIES:
                raise NoCapacity(f"no reef in {instance.region.name} kept a free slot long enough") from None
    _region_refusal(instance)
    raise NoCapacity(f"no reef in {instance.region.name} has free capacity; we are adding capacity")


def _place_anywhere(instance: Instance) -> bool:
    """Try the region's reefs roomiest first, skipping those other placements hold, then wait for those."""
    with connection.cursor() as cursor:
        fast = _postgres(cursor) and instance.tier != Tier.DEDICATED
        tried = []
        while True:
            if fast:
                reef_id, placed = _place_shared(cursor, instance, tried)
            else:
                reef_id, placed = _attempt(cursor, instance, lambda: _lock_roomiest_free_reef(cursor, instance, tried))
            if placed:
                return True
            if reef_id is None:
                break
            tried.append(reef_id)
        # Every reef with room left is either tried or held by another placement: wait our turn on those.
        cursor.execute(
            f"SELECT r.id {_REEFS_WITH_ROOM.format(fits=_fits(instance), exclude='')}", [instance.region_id]
        )
        for (reef_id,) in cursor.fetchall():
            if reef_id not in tried and _attempt(cursor, instance, lambda r=reef_id: _lock_and_count(cursor, r))[1]:
                return True
    return False


@transaction.atomic
def instance_place_alone(*, instance: Instance, reef: Reef) -> None:
    """Place ``instance`` on ``reef`` alone: the reef becomes dedicated to it and then takes no other instance
    (nor any top-up). Audited.

    Raises ``Refused`` (field ``dedicated_reef``) when the reef is in another region, not active, dedicated
    already, or holds any instance; ``NoCapacity`` when it lacks a slot of some kind. Nothing is taken then.
    """
    locked = Reef.objects.select_for_update().select_related("region").get(pk=reef.pk)
    if locked.region_id != instance.region_id:
        raise Refused(f"reef {locked} is not in region {instance.region.name}", field="dedicated_reef")
    if locked.status != ReefStatus.ACTIVE:
        raise Refused(f"reef {locked} is {locked.status}; only an active reef takes an instance",
                      field="dedicated_reef", current_state=locked.status)
    if locked.dedicated_to_id not in (None, instance.pk):
        raise Refused(f"reef {locked} is dedicated to another instance", field="dedicated_reef")
    if Instance.objects.filter(reef=locked).exclude(pk=instance.pk).exists():
        raise Refused(f"reef {locked} holds other instances: a dedicated reef must be empty", field="dedicated_reef")
    if not Reef.objects.filter(pk=locked.pk, dedicated_to__isnull=True).update(dedicated_to=instance) \
            and locked.dedicated_to_id != instance.pk:
        raise Refused(f"reef {locked} was just dedicated to another instance", field="dedicated_reef")
    if not (is_placed(instance) or _place_in(locked, instance)):
        raise NoCapacity(f"reef {locked} has no free slot of every kind for {instance}")
    audit_record(action="reef.dedicate", target=locked, reason=f"instance {instance.name} placed alone",
                 details={"instance": instance.pk})
