"""Writes of the cell model's topology: share bookkeeping of storage pools."""
from django.db import transaction

from cells.choices import PoolKind, ShareStatus
from cells.models import Pool, Share


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
