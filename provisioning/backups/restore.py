"""Restores: a database to a point in time (into a NEW database, switched to in one step), files from a backup.

The services check and record the request (a ``Restore`` row) and queue a restore operation; its plan
(``provisioning/plans/restore.py``) does the work. The replaced database is kept until the customer or
staff confirm (``instance_restore_confirm``) or ``RESTORE_KEEP_OLD_DAYS`` pass (retention drops it).
"""
from __future__ import annotations

from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from cells.choices import OperationKind
from cells.errors import NotSupported, Refused
from cells.models import Instance, Operation, Share
from provisioning import drivers
from provisioning.backups.selectors import (
    RESTORE_STATES,
    backup_for_point_in_time,
    base_backup_for_point_in_time,
    current_database,
    database_restore_supported,
    file_restore_supported,
    kept_old_databases,
    restorable_window,
)
from provisioning.models import Backup, BackupKind, BackupState, BaseBackup, Restore
from provisioning.operations import operation_create, operation_refuse_conflicts


def when(moment: datetime) -> str:
    """A moment as customers and staff read it in messages: UTC, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _lock_restorable(instance: Instance, follows: Operation | None = None) -> Instance:
    """The instance, row-locked, if it may be restored now: its state, and no work in the way (a restore, a backup,
    an upgrade, a stop or start, a decommission; ``OperationInProgress`` names it)."""
    locked = Instance.objects.select_for_update().get(pk=instance.pk)
    if locked.state not in RESTORE_STATES:
        raise Refused(
            f"instance {locked.name} is {locked.state}; only a running or stopped instance can be restored",
            current_state=locked.state,
        )
    operation_refuse_conflicts(kind=OperationKind.RESTORE, instance=locked, ignore=follows)
    return locked


def _queue(restore: Restore, requested_by, follows: Operation | None = None) -> Operation:
    operation = operation_create(
        kind=OperationKind.RESTORE, instance=restore.instance, requested_by=requested_by, follows=follows,
        params={"restore_id": restore.pk, "what": restore.kind},
    )
    Restore.objects.filter(pk=restore.pk).update(operation=operation, new_database=restore.new_database)
    restore.operation = operation
    return operation


def instance_restore(
    *, instance: Instance, point_in_time: datetime, requested_by=None, follows: Operation | None = None
) -> Operation:
    """Restore the instance's database as it was at ``point_in_time`` into a NEW database and switch to it.

    The time must lie in ``restorable_window``. On a pool that restores to any second (``point_in_time_supported``)
    the restore brings back exactly what was committed by then (a managed PostgreSQL pool: from its latest base
    backup at or before the time, recorded on the ``Restore``); elsewhere the latest database backup taken at or
    before it is used. Raises ``Refused`` (with ``field="point_in_time"`` when the time is at fault) for a
    naive or out-of-window time, an instance without backups, in another state than running or stopped;
    ``NotSupported`` on a database provider that cannot restore into a new database and switch to it;
    ``OperationInProgress`` while work that excludes a restore is queued or running. ``follows``: the operation
    whose rollback asks for this restore (not in the way); it may ask for a second up to now on a pool that restores
    any second although the provider cannot restore it yet (its window ends minutes behind now: RDS's
    ``LatestRestorableTime``) — the provider's restore waits until it can.
    """
    if not isinstance(point_in_time, datetime) or timezone.is_naive(point_in_time):
        raise Refused("give the point in time with its time zone", field="point_in_time")
    with transaction.atomic():
        locked = _lock_restorable(instance, follows)
        pool = locked.database_pool
        if pool is None:
            raise Refused(f"instance {locked.name} has no database")
        if not database_restore_supported(pool.provider):
            raise NotSupported(
                f"point-in-time restore is not available yet for this instance's database provider "
                f"({pool.get_provider_display()}); ask support"
            )
        window = restorable_window(instance=locked)
        if window is None:
            raise Refused(f"instance {locked.name} has no database backup to restore from yet", field="point_in_time")
        catching_up = (follows is not None and window.continuous
                       and window.end < point_in_time <= timezone.now())
        if not window.start <= point_in_time <= window.end and not catching_up:
            raise Refused(
                f"{when(point_in_time)} is outside the restorable window, {when(window.start)} to {when(window.end)}",
                field="point_in_time",
            )
        backup = base = None
        if not window.continuous:
            backup = backup_for_point_in_time(instance=locked, point_in_time=point_in_time)
        elif BaseBackup.objects.filter(pool=pool).exists():
            base = base_backup_for_point_in_time(pool=pool, point_in_time=point_in_time)
            if base is None:
                raise Refused(f"no base backup of the pool holds {when(point_in_time)}", field="point_in_time")
        restore = Restore.objects.create(
            instance=locked, kind=BackupKind.DATABASE, backup=backup, base_backup=base, point_in_time=point_in_time,
            requested_by=requested_by,
        )
        restore.new_database = f"{drivers.for_pool(pool).database_name(locked)}_r{restore.pk}"
        return _queue(restore, requested_by, follows)


def instance_restore_files(*, instance: Instance, backup: Backup, requested_by=None) -> Operation:
    """Bring the share's content back from ``backup`` (one of the instance's files backups).

    The share's current content is backed up first (kept as the restore's ``safeguard``), then replaced.
    Raises ``Refused`` (``field="backup"`` when the backup is at fault), ``NotSupported`` when the share's
    provider cannot restore files, and ``OperationInProgress``.
    """
    with transaction.atomic():
        locked = _lock_restorable(instance)
        backup = Backup.objects.filter(pk=backup.pk).first()
        if backup is None or backup.instance_id != locked.pk or backup.kind != BackupKind.FILES:
            raise Refused(f"that is not a files backup of instance {locked.name}", field="backup")
        if backup.state != BackupState.SUCCEEDED:
            raise Refused(f"backup #{backup.pk} is {backup.state}; only a succeeded backup can be restored",
                                 field="backup")
        share = Share.objects.select_related("pool").filter(instance=locked).first()
        if share is None:
            raise Refused(f"instance {locked.name} has no share")
        if not file_restore_supported(share.pool.provider):
            raise NotSupported(
                f"restoring files is not available yet for this instance's storage provider "
                f"({share.pool.get_provider_display()}); ask support"
            )
        restore = Restore.objects.create(
            instance=locked, kind=BackupKind.FILES, backup=backup, requested_by=requested_by
        )
        return _queue(restore, requested_by)


def restore_drop_old_database(*, restore: Restore, confirmed_by=None) -> None:
    """Drop the database ``restore`` replaced (never the one in use; the login stays) and record when."""
    instance = Instance.objects.select_related("database_pool").get(pk=restore.instance_id)
    driver = drivers.for_pool(instance.database_pool)
    in_use = current_database(instance) or driver.database_name(instance)
    if restore.old_database == in_use:
        raise Refused(f"database {in_use} is the one instance {instance.name} uses; it is not dropped")
    driver.drop_database(instance=instance, database=restore.old_database, drop_login=False)
    Restore.objects.filter(pk=restore.pk, old_dropped_at__isnull=True).update(
        old_dropped_at=timezone.now(), confirmed_by=confirmed_by
    )


def instance_restore_confirm(*, instance: Instance, requested_by=None) -> list[str]:
    """Accept the restores done: drop the databases they replaced now rather than at the end of the keep period.

    Returns the names dropped. Raises ``Refused`` when no replaced database is kept; a driver error
    (the server unreachable) propagates and leaves that database recorded as kept.
    """
    kept = list(kept_old_databases(instance))
    if not kept:
        raise Refused(f"instance {instance.name} keeps no replaced database: there is nothing to confirm")
    dropped = []
    for restore in kept:
        restore_drop_old_database(restore=restore, confirmed_by=requested_by)
        dropped.append(restore.old_database)
    return dropped
