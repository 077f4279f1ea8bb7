"""Capacity services: top-ups (the scheduled pass and one reef now), draining, and failed pools replaced.

A top-up is decided twice: once for the whole fleet from facts read without locks (cheap, and most reefs
need nothing), then again for each reef that seemed to need pools, inside a transaction holding that reef's
row lock (``SELECT … FOR UPDATE``) with facts read after the lock was granted. The new pool row (status
``provisioning``) is created in that transaction and counts as coming capacity from the moment it commits,
so a second pass, or a second worker, that waited on the lock sees it and orders nothing.
"""
from __future__ import annotations

import dataclasses
import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from cells.audit import audit_record
from cells.choices import (
    OPERATION_ACTIVE_STATES,
    OPERATION_RETRYABLE_STATES,
    SLOT_HOLDING_INSTANCE_STATES,
    OperationKind,
    PoolKind,
    PoolStatus,
    ReefStatus,
    ShareStatus,
)
from cells.errors import REFUSED, IllegalTransition, NotSupported, OperationInProgress, Refused
from cells.models import Instance, Operation, Pool, Reef
from cells.states import POOL, REEF
from provisioning import drivers
from provisioning.capacity.facts import gather_facts
from provisioning.capacity.planner import Order, TopUpPlan, plan_top_ups, reef_cannot_grow
from provisioning.capacity.thresholds import capacity_settings
from provisioning.operations import operation_create, operation_retry

logger = logging.getLogger(__name__)

def _who(requested_by) -> str:
    return getattr(requested_by, "username", "") or "the hub"


def _note(text: str, requested_by) -> str:
    return f"{text} — {_who(requested_by)}, {timezone.now():%Y-%m-%d %H:%M} UTC"[:500]


# ---- top-ups ---------------------------------------------------------------------------------------------


def capacity_top_up_pass(*, requested_by=None) -> list[int]:
    """Order the pools every in-service reef needs now; returns the ids of the top-up operations started.

    Idempotent: a pool being provisioned counts as coming capacity, so repeating the pass (or running two at
    once) orders nothing more for the same need. Reefs that cannot grow get no order; their shortfall is on
    the capacity page. Reefs are cells: an error ordering for one is logged and the others still get theirs.
    """
    plan = plan_top_ups(gather_facts())
    started = []
    for reef_id in sorted({order.reef_id for order in plan.orders}):
        try:
            operations = _top_up_reef(reef_id, requested_by=requested_by)
        except Exception:
            logger.exception("capacity pass: ordering pools for reef %s failed; the other reefs go on", reef_id)
            continue
        for operation in operations:
            logger.info("capacity pass: %s", operation.params.get("reason", ""))
        started += [operation.pk for operation in operations]
    return started


def reef_top_up(*, reef: Reef, requested_by=None) -> list[Operation]:
    """Top one reef up now, by the same thresholds as the pass (at least one pool per pass even when automatic
    top-ups are off for it); returns the top-up operations started, none when the reef has enough.

    Raises ``Refused`` naming the reason for a reef that cannot grow: not active, in a region that is
    not active, or at its instance limit.
    """
    with transaction.atomic():
        locked = Reef.objects.select_for_update(of=("self",)).select_related("region").get(pk=reef.pk)
        facts = gather_facts(reef_ids=[locked.pk])
        if not facts:
            raise Refused(f"reef {locked.region.slug}/{locked.slug} is {locked.status}; only an active reef "
                                  "gets new pools")
        if reason := reef_cannot_grow(facts[0]):
            raise Refused(f"{reason}; it gets no new pools")
        manual = [
            dataclasses.replace(item, thresholds=dataclasses.replace(
                item.thresholds, max_pools_per_pass=max(item.thresholds.max_pools_per_pass, 1)))
            for item in facts
        ]
        return _order_all(plan_top_ups(manual), locked, requested_by)


def reef_capacity(*, reef: Reef) -> TopUpPlan:
    """The planner's reading of one reef now (no lock, no order): for messages and pages."""
    return plan_top_ups(gather_facts(reef_ids=[reef.pk]))


def _top_up_reef(reef_id: int, *, requested_by) -> list[Operation]:
    """With the reef locked, plan again from fresh facts and order what is still needed."""
    with transaction.atomic():
        locked = Reef.objects.select_for_update(of=("self",)).select_related("region").filter(pk=reef_id).first()
        if locked is None:
            return []
        # The lock may have been granted after another pass committed its pools: these reads see them.
        return _order_all(plan_top_ups(gather_facts(reef_ids=[reef_id])), locked, requested_by)


def _order_all(plan: TopUpPlan, reef: Reef, requested_by) -> list[Operation]:
    taken = set(Pool.objects.filter(reef=reef).values_list("name", flat=True))
    return [_order_pool(order, reef, requested_by, taken) for order in plan.orders]


def _free_name(stem: str, taken: set[str], separator: str = "-") -> str:
    """``<stem><separator><n>`` with the first n not used in the reef (retired pools keep their names: a share's
    bucket name derives from its pool's, and must never meet an old bucket again)."""
    n = 1
    while f"{stem}{separator}{n}" in taken:
        n += 1
    name = f"{stem}{separator}{n}"
    taken.add(name)
    return name


def _template_config(reef: Reef, kind: str, provider: str) -> dict:
    """The config of the reef's newest working pool of the kind and provider, less what names its own host
    (the keys its driver declares in ``host_config_keys``): the new pool gets a host of its own."""
    template = (
        Pool.objects.filter(reef=reef, kind=kind, provider=provider)
        .exclude(status__in=[PoolStatus.RETIRED, PoolStatus.FAILED])
        .order_by("-pk")
        .values_list("config", flat=True)
        .first()
    ) or {}
    return _without_host(template, provider)


def _without_host(config: dict, provider: str) -> dict:
    host = drivers.host_config_keys(provider)
    return {key: value for key, value in config.items() if key not in host}


def _order_pool(order: Order, reef: Reef, requested_by, taken: set[str]) -> Operation:
    """Create the pool (provisioning: coming capacity) and queue its top-up, enqueued once the caller commits.

    Reef isolation: the new pool's config is its template's and ``NEW_POOL_CONFIG``'s, both less the keys naming a
    host, so its provider makes it a host of its own. Raises ``Refused`` when the provider cannot in the reef's
    region (the planner reports that as a shortfall and orders nothing: this is the last guard, for stale facts).
    """
    if refusal := drivers.driver_class(order.provider).new_host_refusal(cloud=reef.region.cloud):
        raise Refused(f"reef {reef.region.slug}/{reef.slug} gets no new {order.provider} pool: {refusal}")
    config = {
        **_template_config(reef, order.kind, order.provider),
        **_without_host(capacity_settings()["NEW_POOL_CONFIG"].get(order.provider, {}), order.provider),
    }
    pool = Pool.objects.create(
        reef=reef,
        name=_free_name(str(order.kind), taken),
        kind=order.kind,
        provider=order.provider,
        capacity=order.capacity,
        status=PoolStatus.PROVISIONING,
        config=config,
        status_reason=_note(f"top-up: {order.reason}", requested_by),
    )
    derived = drivers.for_pool(pool).derived_config()
    if derived:
        pool.config = {**derived, **pool.config}
        Pool.objects.filter(pk=pool.pk).update(config=pool.config)
    return operation_create(
        kind=OperationKind.TOP_UP,
        pool=pool,
        requested_by=requested_by,
        params={"reef": f"{reef.region.slug}/{reef.slug}", "kind": str(order.kind), "provider": str(order.provider),
                "capacity": order.capacity, "reason": order.reason},
    )


# ---- draining --------------------------------------------------------------------------------------------


def reef_drain(*, reef: Reef, requested_by=None) -> Reef:
    """Stop placing instances on the reef (those on it stay); its capacity gets no top-up.

    Raises ``IllegalTransition`` naming the reef's state unless it is active or broken.
    """
    REEF.change(reef, ReefStatus.DRAINING, status_reason=_note("draining", requested_by))
    return reef


def reef_activate(*, reef: Reef, requested_by=None) -> Reef:
    """Take signups on the reef again (after draining, or once a broken reef is mended).

    Raises ``IllegalTransition`` naming the reef's state unless it is draining, broken or provisioning.
    """
    REEF.change(reef, ReefStatus.ACTIVE, status_reason=_note("active", requested_by))
    return reef


def pool_drain(*, pool: Pool, requested_by=None) -> Pool:
    """Give the pool no new instance (those on it stay). Raises ``IllegalTransition`` unless it is available."""
    POOL.change(pool, PoolStatus.DRAINING, status_reason=_note("draining", requested_by))
    return pool


def pool_activate(*, pool: Pool, requested_by=None) -> Pool:
    """Let a draining pool take new instances again. Raises ``IllegalTransition`` unless it is draining, and
    ``Refused`` while its retirement is under way or has begun deleting (retry that instead: its resources may be
    gone)."""
    retiring = (
        Operation.objects.filter(kind=OperationKind.RETIRE, pool=pool)
        .filter(Q(state__in=list(OPERATION_ACTIVE_STATES))
                | Q(state__in=list(OPERATION_RETRYABLE_STATES), params__deleting=True))
        .order_by("-created_at", "-id").first()
    )
    if retiring is not None:
        raise Refused(
            f"pool {pool} is being retired (operation #{retiring.pk} is {retiring.state} and may have deleted some of "
            "its resources); retry the retirement rather than using the pool again",
            current_state=pool.status, operation=retiring.pk,
        )
    POOL.change(pool, PoolStatus.AVAILABLE, only_from={PoolStatus.DRAINING},
                status_reason=_note("available again", requested_by))
    return pool


# ---- failure and replacement -----------------------------------------------------------------------------


def pool_instances(*, pool: Pool):
    """The instances that depend on ``pool``: those holding its shares, databases or deployments."""
    if pool.kind == PoolKind.STORAGE:
        return Instance.objects.filter(share__pool=pool).order_by("name")
    field = "database_pool" if pool.kind == PoolKind.DATABASE else "compute_pool"
    return Instance.objects.filter(**{field: pool}, state__in=list(SLOT_HOLDING_INSTANCE_STATES)).order_by("name")


def pool_mark_failed(*, pool: Pool, reason: str, requested_by=None) -> list[Instance]:
    """Mark the pool failed (staff, or a health check): it takes no instance, and a storage pool may then be
    replaced. Returns the instances that depend on it, for staff to look after.

    Raises ``Refused`` without a reason, ``IllegalTransition`` naming the state if it is failed or
    retired already.
    """
    reason = (reason or "").strip()
    if not reason:
        raise Refused(f"say why pool {pool} failed")
    POOL.change(pool, PoolStatus.FAILED, status_reason=_note(f"failed: {reason}", requested_by))
    return list(pool_instances(pool=pool))


def pool_replace(*, pool: Pool, requested_by=None, config: dict | None = None) -> Operation:
    """Replace a failed storage pool's host: a new pool takes over its shares, share by share, with their
    buckets (or folders) and every file in them; running instances are redeployed on the new endpoints.

    ``config`` is merged into the new pool's config (the failed pool's, less what named its host): for an
    AWS Storage Gateway, ``{"gateway_arn": …}`` or ``{"activation_key": …}`` of the replacement appliance.
    Idempotent: returns the replace under way, or retries a failed one (which resumes where it stopped).
    Raises ``Refused`` for a pool that is not a failed storage pool, ``NotSupported`` when its provider cannot
    move shares to another host (its driver declares no ``host_replacement``).
    """
    with transaction.atomic():
        pool = Pool.objects.select_for_update(of=("self",)).select_related("reef__region").get(pk=pool.pk)
        if pool.kind != PoolKind.STORAGE:
            raise Refused(
                f"pool {pool} is a {pool.kind} pool: only a storage pool's shares move to a new host; "
                "restore its instances from their backups instead"
            )
        replaces = Operation.objects.filter(kind=OperationKind.REPLACE, pool=pool).order_by("-created_at")
        active = replaces.filter(state__in=list(OPERATION_ACTIVE_STATES)).first()
        if active is not None:
            return active
        failed = replaces.filter(state__in=list(OPERATION_RETRYABLE_STATES)).first()
        if failed is not None and pool.status == PoolStatus.FAILED:
            if config:
                new = Pool.objects.get(pk=failed.params["new_pool_id"])
                Pool.objects.filter(pk=new.pk).update(config={**new.config, **config})
            return operation_retry(operation=failed, requested_by=requested_by)
        if pool.status != PoolStatus.FAILED:
            raise Refused(
                f"pool {pool} is {pool.status}; mark it failed before replacing it "
                "(a share must never be served by two hosts at once)"
            )
        if not drivers.capabilities(pool.provider).host_replacement:
            raise NotSupported(
                f"pool {pool} ({pool.get_provider_display()}) cannot move its shares to another host: its provider "
                "keeps them inside the pool's own resource; restore the instances' shares from backups instead"
            )
        kept = _without_host(pool.config, pool.provider)
        taken = set(Pool.objects.filter(reef=pool.reef).values_list("name", flat=True))
        new = Pool.objects.create(
            reef=pool.reef,
            name=_free_name(pool.name[:56], taken, separator="-r"),
            kind=pool.kind,
            provider=pool.provider,
            capacity=pool.capacity,
            dedicated=pool.dedicated,
            status=PoolStatus.PROVISIONING,
            config={**kept, **(config or {})},
            replaces=pool,
            status_reason=_note(f"replaces {pool}", requested_by),
        )
        return operation_create(
            kind=OperationKind.REPLACE,
            pool=pool,
            requested_by=requested_by,
            params={"new_pool_id": new.pk, "new_pool": new.name, "moved": []},
        )


# ---- retirement ------------------------------------------------------------------------------------------

RETIRABLE_POOL_STATES = frozenset({PoolStatus.DRAINING, PoolStatus.FAILED})
# A share being archived or scrubbed (a decommission's, or a scrub's) holds no instance but is still at work.
BUSY_SHARE_STATES = frozenset({ShareStatus.ARCHIVING, ShareStatus.SCRUBBING})
SHOWN_NAMES = 5


@dataclasses.dataclass(frozen=True)
class RetireBlockers:
    """What still uses a pool: the first few instances on it (by name) and how many there are; a storage pool's
    shares being archived or scrubbed (a decommission's, or a scrub's). False when nothing does."""

    instances: list[str]
    instance_count: int
    busy_shares: list[str]

    def __bool__(self) -> bool:
        return bool(self.instance_count or self.busy_shares)

    def __str__(self) -> str:
        parts = []
        if self.instance_count:
            more = self.instance_count - len(self.instances)
            parts.append(f"{self.instance_count} instance(s) use it: {', '.join(self.instances)}"
                         + (f" and {more} more" if more > 0 else ""))
        if self.busy_shares:
            parts.append(f"share(s) still at work: {', '.join(self.busy_shares)}")
        return "; ".join(parts)


def pool_retire_blockers(*, pool: Pool) -> RetireBlockers:
    """What keeps ``pool`` from being retired now (``pool_instances``: those holding its shares, databases or
    deployments; a storage pool's shares that are assigned, archiving or scrubbing). Two or three queries."""
    instances = pool_instances(pool=pool)
    names = list(instances.values_list("name", flat=True)[:SHOWN_NAMES])
    count = len(names) if len(names) < SHOWN_NAMES else instances.count()
    busy = []
    if pool.kind == PoolKind.STORAGE:
        busy = [f"{name} ({status})" for name, status in pool.shares.filter(
            status__in=sorted(str(s) for s in BUSY_SHARE_STATES)
        ).order_by("slot").values_list("name", "status")[:SHOWN_NAMES]]
    return RetireBlockers(instances=names, instance_count=count, busy_shares=busy)


def pool_retire_summary(*, pool: Pool) -> dict:
    """What retiring ``pool`` deletes, for staff to read before they confirm: its provider, the id of its resource,
    the config keys that name its host (a cluster, a server, a gateway, an account), a storage pool's shares not yet
    retired, whether a database pool's cloud alarms go too. Reads the database only."""
    driver_class = drivers.driver_class(pool.provider)
    config = pool.config or {}
    host = [(key, config[key]) for key in driver_class.host_config_keys if config.get(key) not in (None, "", [])]
    if config.get("cluster"):
        host.insert(0, ("cluster", config["cluster"]))
    alarms = pool.kind == PoolKind.DATABASE and driver_class.delete_alarms is not drivers.DatabaseDriver.delete_alarms
    shares = pool.shares.exclude(status=ShareStatus.RETIRED).count() if pool.kind == PoolKind.STORAGE else 0
    return {"provider": driver_class.label, "external_id": pool.external_id, "host": host, "shares": shares,
            "alarms": alarms}


def pool_retire(*, pool: Pool, requested_by=None) -> Operation:
    """Retire a draining or failed pool that nothing uses: delete, in its cloud, everything the hub made for it (its
    shares' buckets / file shares / folders, its cloud alarms, its own resource: a cluster, a server, a gateway, an
    account, a folder), then mark it ``retired`` (``provisioning/plans/retire.py``). Audited (``pool.retire``) in the
    transaction that queues the operation.

    Idempotent: returns the retirement under way, or retries a failed or cancelled one (it resumes at the step that
    failed). Refuses before any work, naming the pool's status (``current_state``): a pool that is neither draining
    nor failed (``IllegalTransition``); one that an instance still uses, naming the first few and their number
    (``Refused``, with ``instances`` and ``instance_count``), or whose shares are being archived or scrubbed;
    ``OperationInProgress`` while a top-up, replace or scrub works on it or on one of its shares.
    """
    with transaction.atomic():
        locked = Pool.objects.select_for_update(of=("self",)).select_related("reef__region").get(pk=pool.pk)
        retires = Operation.objects.filter(kind=OperationKind.RETIRE, pool=locked).order_by("-created_at", "-id")
        active = retires.filter(state__in=list(OPERATION_ACTIVE_STATES)).first()
        if active is not None:
            return active
        if locked.status not in RETIRABLE_POOL_STATES:
            raise IllegalTransition(locked, locked.status, PoolStatus.RETIRED)
        blockers = pool_retire_blockers(pool=locked)
        if blockers:
            raise Refused(f"pool {locked} ({locked.status}) cannot be retired: {blockers}", code=REFUSED,
                          current_state=locked.status, instances=blockers.instances,
                          instance_count=blockers.instance_count, shares=blockers.busy_shares)
        scrub = Operation.objects.filter(
            kind=OperationKind.SCRUB, share__pool=locked, state__in=list(OPERATION_ACTIVE_STATES)
        ).order_by("created_at", "id").first()
        if scrub is not None:
            raise OperationInProgress(scrub, wanted=str(OperationKind.RETIRE))
        summary = pool_retire_summary(pool=locked)
        failed = retires.filter(state__in=list(OPERATION_RETRYABLE_STATES)).first()
        if failed is not None:
            operation = operation_retry(operation=failed, requested_by=requested_by)
        else:
            operation = operation_create(
                kind=OperationKind.RETIRE, pool=locked, requested_by=requested_by,
                params={"pool": locked.name, "reef": f"{locked.reef.region.slug}/{locked.reef.slug}",
                        "status": str(locked.status), "provider": str(locked.provider)},
            )
        audit_record(
            action="pool.retire", target=locked, actor=requested_by,
            reason=f"retire {locked.kind} pool {locked} ({locked.status}): delete what the hub made for it",
            details={"operation": operation.pk, "provider": summary["provider"], "external_id": summary["external_id"],
                     "host": {key: str(value) for key, value in summary["host"]}, "shares": summary["shares"],
                     "alarms": summary["alarms"]},
        )
    return operation
