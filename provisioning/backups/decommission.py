"""Decommission: retire an instance for good, keeping an archive of its share and a final database backup.

The service checks the typed confirmation, moves the instance to ``decommissioning`` and queues the
operation whose plan (``provisioning/plans/decommission.py``) stops compute, archives and scrubs the
share, backs the database up and drops it, returns the share to its pool and removes the DNS record.
"""
from __future__ import annotations

from django.db import transaction

from cells.choices import OPERATION_RETRYABLE_STATES, InstanceState, OperationKind, OperationState, ShareStatus
from cells.errors import IllegalTransition, Refused
from cells.models import Instance, Operation, Share
from cells.states import INSTANCE
from provisioning.backups.services import instance_backup_cancel_schedule
from provisioning.operations import operation_create, operation_refuse_conflicts, operation_retry


def instance_decommission(*, instance: Instance, confirm_name: str, requested_by=None) -> Operation:
    """Queue the decommission of ``instance``; ``confirm_name`` must be its name, typed out (deletion protection).

    Refusals change nothing: ``Refused`` (``field="confirm_name"``) for a name that does not
    match; ``OperationInProgress`` while any other work (a backup, a restore, a provision, …) is queued or running on
    it (a decommission excludes every kind); ``IllegalTransition`` naming the state unless the instance is running,
    stopped or failed. An instance whose decommission failed (or was cancelled) is already ``decommissioning``: the
    same request retries that operation, which resumes at the step that failed (so does one that failed after its last
    step had marked the instance ``decommissioned``).
    """
    with transaction.atomic():
        locked = Instance.objects.select_for_update().get(pk=instance.pk)
        if (confirm_name or "").strip() != locked.name:
            raise Refused(
                f"type the instance's name, {locked.name}, to confirm its decommission; nothing was changed",
                field="confirm_name",
            )
        if locked.state in (InstanceState.DECOMMISSIONING, InstanceState.DECOMMISSIONED):
            existing = Operation.objects.filter(instance=locked, kind=OperationKind.DECOMMISSION).order_by(
                "-created_at", "-id"
            ).first()
            if existing is not None and existing.state in OPERATION_RETRYABLE_STATES:
                return operation_retry(operation=existing, requested_by=requested_by)
        # Before the state changes, so the refusal names the work in the way (operation_create checks again).
        operation_refuse_conflicts(kind=OperationKind.DECOMMISSION, instance=locked)
        if not INSTANCE.can(locked.state, InstanceState.DECOMMISSIONING):
            raise IllegalTransition(locked, locked.state, InstanceState.DECOMMISSIONING)
        share = Share.objects.filter(instance=locked).values_list("pk", flat=True).first()
        INSTANCE.change(locked, InstanceState.DECOMMISSIONING)
        instance_backup_cancel_schedule(instance=locked)
        # The share leaves ``assigned`` (and so drops its instance) during the run: its id is kept here.
        operation = operation_create(
            kind=OperationKind.DECOMMISSION, instance=locked, requested_by=requested_by,
            params={"share_id": share, "confirmed_name": locked.name},
        )
    instance.state = locked.state
    return operation


def share_scrub(*, share: Share, requested_by=None) -> Operation:
    """Queue the scrub of a ``failed`` share that holds no instance: wiped, verified empty, returned to its pool.

    Idempotent: returns the scrub under way, or retries a failed one (it resumes at the step that failed).
    Refuses before any work: ``IllegalTransition`` naming the state unless the share is failed (a share being
    scrubbed by a decommission is that decommission's to finish); ``OperationInProgress`` while its pool is being
    retired. A failed share holds no instance (the database's
    ``share_assigned_iff_instance``), so no customer's live files are ever wiped here.
    """
    with transaction.atomic():
        # The pool's row first (a retire takes it too): no scrub starts while the pool's retirement is under way.
        operation_refuse_conflicts(kind=OperationKind.SCRUB, pool=share.pool)
        locked = Share.objects.select_for_update().get(pk=share.pk)
        scrubs = Operation.objects.filter(kind=OperationKind.SCRUB, share=locked).order_by("-created_at", "-id")
        active = scrubs.filter(state__in=[OperationState.QUEUED, OperationState.RUNNING]).first()
        if active is not None:
            return active
        if locked.status == ShareStatus.SCRUBBING:
            failed = scrubs.filter(state__in=list(OPERATION_RETRYABLE_STATES)).first()
            if failed is not None:
                return operation_retry(operation=failed, requested_by=requested_by)
        if locked.status != ShareStatus.FAILED:
            raise IllegalTransition(locked, locked.status, ShareStatus.SCRUBBING)
        return operation_create(kind=OperationKind.SCRUB, share=locked, requested_by=requested_by,
                                params={"share": locked.name, "pool": locked.pool.name})
