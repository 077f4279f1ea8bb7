"""The replace plan: a failed storage pool's shares move to a new pool host, keeping every file.

host (the replacement pool's own resource: a new gateway, a new folder) → shares (the provider re-associates
each share's bucket / file share / folder with the new host; then each share row moves to the new pool with
its new endpoint, one share per transaction, the names moved so far recorded in the operation's params) →
instances (running and stopped instances redeployed so they mount the new endpoint) → the new pool available,
the failed one retired.

A share keeps its row (id, slot, name, instance, firewall address): only its pool and endpoint change, so
what refers to it (its instance, its operations, backups) stays valid. Nothing is ever deleted here: on a
failure the replacement pool is marked failed and the shares stay where they are (moved or not); a retry
continues from the step that failed, and a share already moved is not moved again.
"""
from __future__ import annotations

import dataclasses

from django.db import transaction
from django.utils import timezone

from cells.choices import InstanceState, OperationKind, PoolStatus
from cells.models import Instance, Operation, Pool, Share
from cells.states import POOL
from provisioning import drivers
from provisioning.backups.selectors import database_kwargs
from provisioning.drivers.base import PermanentDriverError
from provisioning.plans.provision import deployment_spec
from provisioning.plans.registry import HOURS, Plan, register_plan

REDEPLOYED_STATES = (InstanceState.RUNNING, InstanceState.STOPPED)


def _pools(operation: Operation) -> tuple[Pool, Pool]:
    """The failed pool (the operation's target) and its replacement."""
    pools = Pool.objects.select_related("reef__region").in_bulk([operation.pool_id, operation.params["new_pool_id"]])
    return pools[operation.pool_id], pools[operation.params["new_pool_id"]]


def replace_begin(operation: Operation) -> None:
    old, new = _pools(operation)
    if old.status != PoolStatus.FAILED:
        raise PermanentDriverError(f"pool {old} is {old.status}; only a failed pool is replaced")
    if new.status == PoolStatus.FAILED:
        POOL.change(new, PoolStatus.PROVISIONING, only_from={PoolStatus.FAILED}, status_reason=f"replaces {old}")
    elif new.status != PoolStatus.PROVISIONING:
        raise PermanentDriverError(f"replacement pool {new} is {new.status}; it cannot take over {old}")


def replace_host(operation: Operation) -> None:
    """Create (or find) the replacement's own resource: the new gateway, storage host or folder."""
    _, new = _pools(operation)
    result = drivers.for_pool(new).provision_pool()
    Pool.objects.filter(pk=new.pk).update(
        external_id=result.get("external_id", ""), config={**new.config, **result.get("config", {})}
    )


def replace_shares(operation: Operation) -> None:
    """Re-associate the shares still on the failed pool with the new host, then move their rows one by one."""
    old, new = _pools(operation)
    if not new.external_id:
        raise PermanentDriverError(f"replacement pool {new} has no host id; its host step did not finish")
    result = drivers.for_pool(old).replace_pool(new.external_id)
    if result.get("config"):
        Pool.objects.filter(pk=new.pk).update(config={**new.config, **result["config"]})
    endpoints = result.get("endpoints", {})
    for share in old.shares.order_by("slot"):
        if share.name not in endpoints:
            raise PermanentDriverError(f"the provider gave no endpoint on {new} for share {share}; it stays on {old}")
        with transaction.atomic():
            moved = Share.objects.filter(pk=share.pk, pool=old).update(pool=new, endpoint=endpoints[share.name])
            if moved:
                operation.params = {**operation.params, "moved": [*operation.params.get("moved", []), share.name]}
                Operation.objects.filter(pk=operation.pk).update(params=operation.params, updated_at=timezone.now())


def replace_instances(operation: Operation) -> None:
    """Redeploy the instances on the moved shares so they mount the new endpoints (a stopped one stays at zero)."""
    _, new = _pools(operation)
    instances = Instance.objects.filter(share__pool=new, state__in=REDEPLOYED_STATES).select_related(
        "region", "reef", "database_pool", "compute_pool", "share"
    )
    for instance in instances:
        credentials = drivers.for_pool(instance.database_pool).credentials(instance, **database_kwargs(instance))
        spec = deployment_spec(instance, database_url=credentials.url, share=instance.share)
        if instance.state == InstanceState.STOPPED:
            spec = dataclasses.replace(spec, replicas=0)
        drivers.for_pool(instance.compute_pool).deploy(spec=spec)


def replace_succeed(operation: Operation) -> None:
    old, new = _pools(operation)
    with transaction.atomic():
        POOL.change(new, PoolStatus.AVAILABLE, status_reason=f"replaced {old} (operation #{operation.pk})")
        POOL.change(old, PoolStatus.RETIRED, status_reason=f"replaced by {new} (operation #{operation.pk})")


def replace_fail(operation: Operation, message: str) -> str:
    """Delete nothing (shares hold customer data): the replacement is marked failed; a retry continues."""
    old, new = _pools(operation)
    if new.status == PoolStatus.PROVISIONING:
        POOL.change(new, PoolStatus.FAILED, status_reason=f"replacing {old} failed: {message}"[:500])
    moved = new.shares.count()
    left = old.shares.count()
    return (
        f"nothing deleted: {moved} share(s) on {new}, {left} still on {old}; "
        "fix the cause (e.g. the new host's config) and retry: it resumes where it stopped"
    )


REPLACE = Plan(
    steps=[("host", replace_host), ("shares", replace_shares), ("instances", replace_instances)],
    begin=replace_begin,
    succeed=replace_succeed,
    fail=replace_fail,
    time_limit=8 * HOURS, step_timeout=540.0,
)
register_plan(OperationKind.REPLACE, REPLACE)
