"""The retire plan: a draining or failed pool that nothing uses any more is deleted in its cloud and marked retired.

shares (a storage pool's remaining shares: a failed one is wiped first, then each share's bucket / file share /
folder is deleted and the share row marked ``retired``, one share at a time) → alarms (a database pool's cloud metric
alarms) → pool (the provider's own resource through ``delete_pool``: an RDS instance, an elastic pool and its server,
a gateway the hub started, a storage account, an EKS / AKS cluster the hub made, a managed PostgreSQL cluster, a
local folder or supervisord group) → the pool ``retired`` (a conditional change from draining or failed).

Shares go first: the pool's resource is what reaches them (a gateway serves the buckets' file shares), so deleting
it first could leave buckets nobody can list through the pool any more. Every driver call is idempotent — absent is
fine — so a step repeated after a crash or a failure finishes what the last attempt began.

The pool keeps its status (draining or failed) until the very end: a failure at any step leaves it as it was,
with what was deleted so far recorded on the operation (its steps, the shares already retired); a retry resumes at
the step that failed. ``pool_retire`` refuses before any work a pool that is neither draining nor failed or that an
instance still uses; ``begin`` checks it again, since the pool may have changed between the order and the run.
"""
from __future__ import annotations

from cells.choices import OperationKind, PoolKind, PoolStatus, ShareStatus
from cells.models import Operation, Pool
from cells.states import POOL, SHARE
from provisioning import drivers
from provisioning.capacity.services import RETIRABLE_POOL_STATES, pool_retire_blockers
from provisioning.drivers.base import PermanentDriverError
from provisioning.plans.registry import HOURS, Plan, register_plan


def _pool(operation: Operation) -> Pool:
    return Pool.objects.select_related("reef__region").get(pk=operation.pool_id)


def retire_begin(operation: Operation) -> None:
    """The pool must still be draining or failed, and nothing may use it (``pool_retire_blockers``)."""
    pool = _pool(operation)
    if pool.status not in RETIRABLE_POOL_STATES:
        raise PermanentDriverError(f"pool {pool} is {pool.status}; only a draining or failed pool is retired")
    if blockers := pool_retire_blockers(pool=pool):
        raise PermanentDriverError(f"pool {pool} is still in use: {blockers}; nothing more was deleted")


def _deleting(operation: Operation) -> None:
    """Record, before the first deletion, that this retirement may have deleted something: from then on the pool is
    not made available again (``pool_activate``) until the retirement is finished."""
    if not operation.params.get("deleting"):
        operation.params = {**operation.params, "deleting": True}
        Operation.objects.filter(pk=operation.pk).update(params=operation.params)


def retire_shares(operation: Operation) -> None:
    """Each remaining share of a storage pool: wiped if it failed (it held files nobody owns any more), its resource
    deleted, its row retired — one share at a time, so a failure leaves each share either whole or retired."""
    _deleting(operation)
    pool = _pool(operation)
    if pool.kind != PoolKind.STORAGE:
        return
    storage = drivers.for_pool(pool)
    for share in pool.shares.exclude(status=ShareStatus.RETIRED).order_by("slot"):
        share.pool = pool
        if share.status not in (ShareStatus.AVAILABLE, ShareStatus.FAILED):
            raise PermanentDriverError(f"share {share} is {share.status}; it is not retired")
        if share.status == ShareStatus.FAILED and storage.share_exists(share=share):
            storage.scrub_share(share=share)
        storage.delete_share(share=share)
        SHARE.change(share, ShareStatus.RETIRED, firewall_address="")


def retire_alarms(operation: Operation) -> None:
    """A database pool's cloud metric alarms, where its provider has them; absent is fine."""
    _deleting(operation)
    pool = _pool(operation)
    if pool.kind == PoolKind.DATABASE:
        drivers.for_pool(pool).delete_alarms()


def retire_pool(operation: Operation) -> None:
    """The provider's own resource of the pool (``delete_pool``; absent is fine)."""
    _deleting(operation)
    drivers.for_pool(_pool(operation)).delete_pool()


def retire_succeed(operation: Operation) -> None:
    """Retired: from draining or failed only, whoever changed it since (a draining pool marked failed meanwhile)."""
    pool = _pool(operation)
    who = getattr(operation.requested_by, "username", "") or "the hub"
    POOL.change(pool, PoolStatus.RETIRED, only_from=set(RETIRABLE_POOL_STATES),
                status_reason=f"retired by {who} (operation #{operation.pk}): its resources were deleted"[:500])


def retire_fail(operation: Operation, message: str) -> str:
    """Nothing to undo (nothing was made): the pool keeps its status; a retry resumes where this one stopped."""
    pool = _pool(operation)
    done = [name for name in RETIRE.step_names if name in operation.done_step_names]
    retired = pool.shares.filter(status=ShareStatus.RETIRED).count() if pool.kind == PoolKind.STORAGE else 0
    deleted = f"done: {', '.join(done)}" if done else "no step finished"
    shares = f"; {retired} share(s) retired" if retired else ""
    return f"pool {pool} stays {pool.status} ({deleted}{shares}); retry to finish the retirement"


RETIRE = Plan(
    steps=[("shares", retire_shares), ("alarms", retire_alarms), ("pool", retire_pool)],
    begin=retire_begin,
    succeed=retire_succeed,
    fail=retire_fail,
    # A top-up (its retry) would make again what this deletes; a replace moves shares this deletes; a scrub works on
    # a share this deletes (a scrub's target is a share: ``pool_retire`` also refuses while one runs on the pool).
    excludes=frozenset({OperationKind.TOP_UP, OperationKind.REPLACE, OperationKind.SCRUB}),
    time_limit=8 * HOURS, step_timeout=540.0,
)
register_plan(OperationKind.RETIRE, RETIRE)
