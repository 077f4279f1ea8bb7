"""Writes of the cell model's topology: pools registered and changed by staff, share bookkeeping of storage pools."""
from django.core.exceptions import ValidationError
from django.db import transaction

from cells.choices import SLOT_HOLDING_INSTANCE_STATES, PoolKind, PoolStatus, ShareStatus
from cells.errors import Refused
from cells.models import Instance, Pool, Share
from cells.validators import SECRET_REFERENCE_SUFFIX, validate_pool_config


def share_name(*, pool: Pool, slot: int) -> str:
    """The deterministic bucket / file-share name of a slot: a repeated call finds the same resource."""
    return f"{pool.reef.region.slug}-{pool.reef.slug}-{pool.name}-s{slot:02d}"


@transaction.atomic
def pool_ensure_shares(*, pool: Pool) -> list[Share]:
    """Make sure a storage pool has one share row per slot; idempotent, returns them in slot order.

    Raises ``ValueError`` for a pool that is not a storage pool.
    """
    if pool.kind != PoolKind.STORAGE:
        raise ValueError(f"pool {pool} is a {pool.kind} pool; only storage pools have shares")
    existing = set(pool.shares.values_list("slot", flat=True))
    Share.objects.bulk_create(
        [
            Share(pool=pool, slot=slot, name=share_name(pool=pool, slot=slot), status=ShareStatus.AVAILABLE)
            for slot in range(pool.capacity)
            if slot not in existing
        ]
    )
    return list(pool.shares.order_by("slot"))


@transaction.atomic
def pool_register(*, reef, name: str, kind: str, provider: str, capacity: int, dedicated: bool = False,
                  config: dict | None = None) -> Pool:
    """Register a pool whose host already exists (staff added it by hand): it is ``available`` at once, and a
    storage pool gets its share rows. A host the hub should create is ordered by a top-up instead.

    Raises ``Refused`` naming the field for a config that is not an object or names a secret it may not.
    """
    config = {} if config is None else config
    _config_allowed(config)
    pool = Pool.objects.create(reef=reef, name=name, kind=kind, provider=provider, capacity=capacity,
                               dedicated=dedicated, config=config, status=PoolStatus.AVAILABLE)
    if kind == PoolKind.STORAGE:
        pool_ensure_shares(pool=pool)
    return pool


@transaction.atomic
def pool_change(*, pool: Pool, **changes) -> Pool:
    """Change a pool's settings under its row lock, refusing what would break what it holds.

    While the pool holds anything (instances on a database or compute pool, shares in use on a storage pool) its
    reef, provider and host settings (every config key but the ``*_env`` secret references) cannot change; its
    kind never changes; its capacity never drops below what is in use. A storage pool's share rows follow its
    capacity. Raises ``Refused`` with the field at fault (code ``invalid``).
    """
    locked = Pool.objects.select_for_update().get(pk=pool.pk)
    used = _used_slots(locked)
    if "kind" in changes and changes["kind"] != locked.kind:
        raise Refused("A pool's kind cannot change; register a new pool.", field="kind")
    if "config" in changes:
        _config_allowed(changes["config"])
    if used:
        for field in ("reef", "provider"):
            if field in changes and changes[field] != getattr(locked, field):
                raise Refused(f"The pool holds {used} slot(s) in use; its {field} cannot change.", field=field)
        if "config" in changes and _host_settings(changes["config"]) != _host_settings(locked.config or {}):
            raise Refused(f"The pool holds {used} slot(s) in use; its host settings cannot change (only the "
                          f"*{SECRET_REFERENCE_SUFFIX} secret references may).", field="config")
    capacity = changes.get("capacity", locked.capacity)
    if capacity < used:
        raise Refused(f"{used} slot(s) of this pool are in use; its capacity cannot drop below {used}.",
                      field="capacity")
    if locked.kind == PoolKind.STORAGE and capacity < locked.capacity:
        beyond = locked.shares.filter(slot__gte=capacity)
        if beyond.exclude(status=ShareStatus.AVAILABLE).exists():
            raise Refused(f"A share at slot {capacity} or above is in use; its capacity cannot drop to {capacity}.",
                          field="capacity")
        beyond.delete()
    for field, value in changes.items():
        setattr(locked, field, value)
    locked.save()
    if locked.kind == PoolKind.STORAGE:
        pool_ensure_shares(pool=locked)
    return locked


def _config_allowed(config) -> None:
    try:
        validate_pool_config(config)
    except ValidationError as error:
        raise Refused(" ".join(error.messages), field="config") from None


def _host_settings(config: dict) -> dict:
    return {key: value for key, value in config.items() if not key.endswith(SECRET_REFERENCE_SUFFIX)}


def _used_slots(pool: Pool) -> int:
    if pool.kind == PoolKind.STORAGE:
        in_use = [ShareStatus.ASSIGNED, ShareStatus.ARCHIVING, ShareStatus.SCRUBBING]
        return pool.shares.filter(status__in=in_use).count()
    holding = Instance.objects.filter(state__in=SLOT_HOLDING_INSTANCE_STATES)
    if pool.kind == PoolKind.DATABASE:
        return holding.filter(database_pool=pool).count()
    return holding.filter(compute_pool=pool).count()
