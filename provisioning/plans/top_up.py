"""The top-up plan: a pool ordered by the capacity pass becomes available, or fails leaving nothing behind.

pool (the provider's resource: a server, a gateway, a folder) → alarms (a database pool's cloud metric alarms,
deleted with the pool) → shares (a storage pool's rows, one per slot, each with its own bucket / file share /
folder) → available. Every step is idempotent (drivers derive names
from ids; ``pool_ensure_shares`` adds only missing rows), so a re-run after a crash repeats at most one step.
On failure the pool's shares and resources are deleted, its share rows removed and the pool left ``failed``
with the error; a retry starts from the first step. A failed top-up holds back further orders for its reef
and kind until staff retry it or retire the pool (the capacity page says so).
"""
from __future__ import annotations

from cells.choices import OperationKind, PoolKind, PoolStatus
from cells.models import Operation, Pool, Share
from cells.services import pool_ensure_shares
from cells.states import POOL
from provisioning import drivers
from provisioning.drivers.base import PermanentDriverError
from provisioning.plans.registry import HOURS, Plan, register_plan


def _pool(operation: Operation) -> Pool:
    return Pool.objects.select_related("reef__region").get(pk=operation.pool_id)


def top_up_begin(operation: Operation) -> None:
    """provisioning stays; failed (a retry) → provisioning; anything else is not a pool this top-up may touch."""
    pool = _pool(operation)
    if pool.status == PoolStatus.FAILED:
        POOL.change(pool, PoolStatus.PROVISIONING, only_from={PoolStatus.FAILED}, status_reason="top-up retried")
    elif pool.status != PoolStatus.PROVISIONING:
        raise PermanentDriverError(f"pool {pool} is {pool.status}; a top-up only provisions a new pool")


def top_up_pool(operation: Operation) -> None:
    """Create (or find) the pool's own resource and record its id and the provider's settings for it."""
    pool = _pool(operation)
    result = drivers.for_pool(pool).provision_pool()
    Pool.objects.filter(pk=pool.pk).update(
        external_id=result.get("external_id", ""), config={**pool.config, **result.get("config", {})}
    )


def top_up_alarms(operation: Operation) -> None:
    """A database pool's cloud metric alarms (CPU, storage, connections), where its provider has them."""
    pool = _pool(operation)
    if pool.kind == PoolKind.DATABASE:
        drivers.for_pool(pool).ensure_alarms()


def top_up_shares(operation: Operation) -> None:
    """A storage pool's share rows, and each share's bucket / file share / folder with its endpoint."""
    pool = _pool(operation)
    if pool.kind != PoolKind.STORAGE:
        return
    storage = drivers.for_pool(pool)
    for share in pool_ensure_shares(pool=pool):
        if not share.endpoint:
            endpoint = storage.create_share(share=share)
            Share.objects.filter(pk=share.pk).update(endpoint=endpoint)


def top_up_succeed(operation: Operation) -> None:
    POOL.change(_pool(operation), PoolStatus.AVAILABLE, status_reason="")


def _undo(pool: Pool) -> list[str]:
    """Delete what the top-up made: each share's resource and row, then the pool's resource. A share that an
    instance holds (none should: the pool was never available) is kept, and so then is the pool's resource."""
    problems = []
    driver = drivers.for_pool(pool)
    if pool.kind == PoolKind.STORAGE:
        for share in pool.shares.order_by("slot"):
            if share.instance_id is not None:
                problems.append(f"share {share} is held by instance {share.instance_id}: kept")
                continue
            try:
                driver.delete_share(share=share)
                share.delete()
            except Exception as error:
                problems.append(f"share {share}: {error.__class__.__name__}: {error}")
    if not problems and pool.kind == PoolKind.DATABASE:
        try:
            driver.delete_alarms()
        except Exception as error:
            problems.append(f"alarms: {error.__class__.__name__}: {error}")
    if not problems:
        try:
            driver.delete_pool()
            Pool.objects.filter(pk=pool.pk).update(external_id="")
        except Exception as error:
            problems.append(f"pool resource: {error.__class__.__name__}: {error}")
    return problems


def top_up_fail(operation: Operation, message: str) -> str:
    """Delete what was made and leave the pool failed (the error in its reason); a retry starts afresh."""
    pool = _pool(operation)
    if pool.status not in (PoolStatus.PROVISIONING, PoolStatus.FAILED):
        return f"pool {pool} is {pool.status}: left as it is"
    problems = _undo(pool)
    reason = f"top-up failed: {message}"[:500]
    if pool.status == PoolStatus.FAILED:
        Pool.objects.filter(pk=pool.pk).update(status_reason=reason)
    else:
        POOL.change(pool, PoolStatus.FAILED, status_reason=reason)
    Operation.objects.filter(pk=operation.pk).update(steps=[])
    if problems:
        return "cleanup incomplete (a retry finishes it): " + "; ".join(problems)
    return "everything the top-up made was deleted; the pool is failed until the top-up is retried or it is retired"


TOP_UP = Plan(
    steps=[("pool", top_up_pool), ("alarms", top_up_alarms), ("shares", top_up_shares)],
    begin=top_up_begin,
    succeed=top_up_succeed,
    fail=top_up_fail,
    time_limit=8 * HOURS, step_timeout=540.0,
)
register_plan(OperationKind.TOP_UP, TOP_UP)
