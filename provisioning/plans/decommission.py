"""The decommission plan: an instance is retired, its data kept in deep storage, its share returned clean.

Steps, each idempotent (a re-run after a crash or a retry after a failure repeats at most the step it
stopped in):

1. stop_compute — the deployment is deleted;
2. archive_share — the share leaves ``assigned`` for ``archiving`` (dropping its instance: its id is in the
   operation's params) and its content is zipped, encrypted, to deep storage; the checksum is recorded;
3. final_backup — a last database backup;
4. drop_database — every database of the instance (the current one, those restores kept) and its login;
5. scrub_share — ``scrubbing``: every file removed and the firewall closed, then verified empty;
6. return_share — ``available`` again, indistinguishable from a fresh share;
7. remove_dns — the instance's record removed;
8. mark_decommissioned — the instance ends ``decommissioned``.

The archive and the final backup are kept ``ARCHIVE_RETENTION_DAYS``. A failure at any step fails the
operation with the error (staff are told by mail, as of every failed operation); the instance stays
``decommissioning`` and the share out of the pool, nothing is released the way a failed provision is, and a
retry resumes at that step.
"""
from __future__ import annotations

import logging

from django.core.mail import send_mail
from django.utils import timezone

from cells.choices import InstanceState, OperationKind, ShareStatus
from cells.models import Instance, Operation, Share
from cells.states import INSTANCE, SHARE
from provisioning import drivers
from provisioning.backups.selectors import current_database
from provisioning.backups.services import backup_take
from provisioning.drivers.base import PermanentDriverError
from provisioning.models import Backup, BackupKind, BackupReason, BackupState, Restore, RestoreState
from provisioning.plans.registry import HOURS, Plan, register_plan
from provisioning.ports import instance_port_release

logger = logging.getLogger(__name__)


def _instance(operation: Operation) -> Instance:
    return Instance.objects.select_related("region", "database_pool", "compute_pool").get(pk=operation.instance_id)


def _share(operation: Operation) -> Share | None:
    share_id = operation.params.get("share_id")
    return Share.objects.select_related("pool").get(pk=share_id) if share_id else None


def _note(operation: Operation, text: str) -> None:
    """Record a fact staff should read about a step (e.g. a step that had nothing to do)."""
    notes = [*operation.params.get("notes", []), text]
    operation.params = {**operation.params, "notes": notes}
    Operation.objects.filter(pk=operation.pk).update(params=operation.params)


def _succeeded(operation: Operation, kind: str, reason: str) -> bool:
    return Backup.objects.filter(operation=operation, kind=kind, reason=reason, state=BackupState.SUCCEEDED).exists()


def decommission_begin(operation: Operation) -> None:
    """The service moved the instance to decommissioning; anything else means someone changed it meanwhile — but
    for ``decommissioned`` once every step before the last is done: the last step made that change and the run
    ended before recording it (its worker died, or the step failed after the change), so a retry finishes."""
    instance = _instance(operation)
    before_last = {name for name, _ in DECOMMISSION.steps[:-1]}
    if instance.state != InstanceState.DECOMMISSIONING and not (
        instance.state == InstanceState.DECOMMISSIONED and before_last <= set(operation.done_step_names)
    ):
        raise PermanentDriverError(f"instance {instance.name} is {instance.state}, not decommissioning")


def decommission_stop_compute(operation: Operation) -> None:
    """Stop and delete the deployment (on a local runtime: its process), then free its port."""
    instance = _instance(operation)
    if instance.compute_pool_id:
        drivers.for_pool(instance.compute_pool).delete(instance=instance)
    instance_port_release(instance=instance)


def decommission_archive_share(operation: Operation) -> None:
    share = _share(operation)
    if share is None:
        _note(operation, "archive_share: the instance had no share")
        return
    if share.status == ShareStatus.ASSIGNED:
        if share.instance_id != operation.instance_id:
            raise PermanentDriverError(f"share {share} is assigned to another instance; it is not archived")
        SHARE.change(share, ShareStatus.ARCHIVING, instance=None)
    elif share.status != ShareStatus.ARCHIVING:
        raise PermanentDriverError(f"share {share} is {share.status}, not archiving")
    backup_take(
        operation=operation, instance=_instance(operation), kind=BackupKind.FILES, reason=BackupReason.ARCHIVE,
        share=share,
    )


def decommission_final_backup(operation: Operation) -> None:
    instance = _instance(operation)
    if instance.database_pool_id is None:
        _note(operation, "final_backup: the instance had no database")
        return
    database = drivers.for_pool(instance.database_pool)
    name = current_database(instance)
    exists = database.database_exists(instance=instance, **({"database": name} if name else {}))
    if not exists and not _succeeded(operation, BackupKind.DATABASE, BackupReason.FINAL):
        _note(operation, "final_backup: the instance's database did not exist")
        return
    backup_take(operation=operation, instance=instance, kind=BackupKind.DATABASE, reason=BackupReason.FINAL)


def decommission_drop_database(operation: Operation) -> None:
    """Drop the current database, the ones restores replaced and kept, then the login."""
    instance = _instance(operation)
    if instance.database_pool_id is None:
        return
    database = drivers.for_pool(instance.database_pool)
    current = current_database(instance)
    if current is None:
        database.drop_database(instance=instance)
        return
    kept = Restore.objects.filter(instance=instance, old_dropped_at__isnull=True).exclude(old_database="")
    # A failed restore whose clean-up failed too may have left its unfinished new database behind.
    unfinished = Restore.objects.filter(instance=instance, state=RestoreState.FAILED).exclude(new_database="")
    names = {
        database.database_name(instance),
        *kept.values_list("old_database", flat=True),
        *unfinished.values_list("new_database", flat=True),
    } - {current}
    for name in sorted(names):
        database.drop_database(instance=instance, database=name, drop_login=False)
    kept.update(old_dropped_at=timezone.now())
    database.drop_database(instance=instance, database=current)


def decommission_scrub_share(operation: Operation) -> None:
    share = _share(operation)
    if share is None:
        return
    if share.status == ShareStatus.ARCHIVING:
        if not _succeeded(operation, BackupKind.FILES, BackupReason.ARCHIVE):
            raise PermanentDriverError(f"share {share} has no archive yet; it is not scrubbed")
        SHARE.change(share, ShareStatus.SCRUBBING)
    elif share.status != ShareStatus.SCRUBBING:
        raise PermanentDriverError(f"share {share} is {share.status}, not scrubbing")
    share_scrub_and_verify(share)


def share_scrub_and_verify(share: Share) -> None:
    """Remove every file of ``share`` (a share that is gone is made again, empty) and close its firewall, then prove
    it empty where the driver can list it. Safe to repeat. Raises ``PermanentDriverError`` naming what is left."""
    storage = drivers.for_pool(share.pool)
    if storage.share_exists(share=share):
        storage.scrub_share(share=share)
    else:
        # Gone: a scrub that deletes and makes the share again (Azure Files) was cut short between the two (Azure
        # still deleting it), or it was lost. Made again, empty, so the share returns to its pool as a fresh one.
        storage.create_share(share=share)
    storage.set_firewall(share=share, address="")
    # Verified, not trusted: the drivers that can list a share prove it empty.
    if hasattr(storage, "share_listing"):
        left = storage.share_listing(share=share)
        if left:
            shown = ", ".join(list(left)[:5])
            raise PermanentDriverError(f"share {share} still holds {len(left)} entries after the scrub: {shown}")


def decommission_return_share(operation: Operation) -> None:
    share = _share(operation)
    if share is None:
        return
    if share.status == ShareStatus.SCRUBBING:
        SHARE.change(share, ShareStatus.AVAILABLE, instance=None, firewall_address="")
    elif share.status not in {ShareStatus.AVAILABLE, ShareStatus.ASSIGNED}:
        # available or assigned: returned already (a re-run), perhaps to a new instance by now
        raise PermanentDriverError(f"share {share} is {share.status}, not scrubbing")


def decommission_remove_dns(operation: Operation) -> None:
    instance = _instance(operation)
    drivers.for_dns(instance.region).delete_record(name=instance.name)


def decommission_mark_decommissioned(operation: Operation) -> None:
    instance = _instance(operation)
    if instance.state != InstanceState.DECOMMISSIONED:
        INSTANCE.change(instance, InstanceState.DECOMMISSIONED)


def decommission_succeed(operation: Operation) -> None:
    """Tell the owner; a mail failure never fails the decommission."""
    instance = Instance.objects.select_related("owner").get(pk=operation.instance_id)
    archive = Backup.objects.filter(operation=operation, reason=BackupReason.ARCHIVE).first()
    if not instance.owner.email:
        return
    kept = f" An archive of its files is kept until {archive.expires_at:%Y-%m-%d}." if archive else ""
    try:
        send_mail(
            subject=f"Your instance {instance.name} was decommissioned",
            message=f"Hello,\n\nyour instance {instance.name} was decommissioned as requested.{kept}\n\n— Cell Hub",
            from_email=None,
            recipient_list=[instance.owner.email],
        )
    except Exception:
        logger.exception("decommission mail to %s for %s not sent", instance.owner.email, instance.name)


def decommission_fail(operation: Operation, message: str) -> str:
    """Release nothing: the instance stays decommissioning, the share out of the pool (staff are told by mail, as
    of every failed operation: provisioning/notifications.py)."""
    instance = Instance.objects.get(pk=operation.instance_id)
    steps = [name for name, _ in DECOMMISSION.steps]
    failed_at = next((name for name in steps if name not in operation.done_step_names), "the end")
    logger.error("decommission of %s (operation %s) failed at %s: %s", instance.name, operation.pk, failed_at, message)
    return (f"stopped at {failed_at}; the instance stays decommissioning and its share out of the pool; "
            "a retry resumes there")


DECOMMISSION = Plan(
    steps=[
        ("stop_compute", decommission_stop_compute),
        ("archive_share", decommission_archive_share),
        ("final_backup", decommission_final_backup),
        ("drop_database", decommission_drop_database),
        ("scrub_share", decommission_scrub_share),
        ("return_share", decommission_return_share),
        ("remove_dns", decommission_remove_dns),
        ("mark_decommissioned", decommission_mark_decommissioned),
    ],
    begin=decommission_begin,
    succeed=decommission_succeed,
    fail=decommission_fail,
    # It takes everything apart: nothing else may act on the instance meanwhile.
    excludes=frozenset({
        OperationKind.PROVISION, OperationKind.BACKUP, OperationKind.RESTORE, OperationKind.UPGRADE,
        OperationKind.STOP, OperationKind.START,
    }),
    time_limit=6 * HOURS, step_timeout=540.0,
)
register_plan(OperationKind.DECOMMISSION, DECOMMISSION)
