"""Backups: on demand, on a schedule, and retention.

``instance_backup`` queues a backup operation (its plan is ``provisioning/plans/backup.py``);
``backup_take`` is what a step runs to make one backup into its ``Backup`` row (the backup, restore and
decommission plans share it); ``backups_run_due`` and ``backups_expire`` are the scheduler's passes.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from cells.choices import InstanceState, OperationKind, OperationState
from cells.errors import Refused
from cells.models import Instance, Operation, Share
from provisioning import drivers
from provisioning.backups.restore import restore_drop_old_database
from provisioning.backups.selectors import BACKUP_STATES, active_operations, database_kwargs
from provisioning.drivers.base import DriverError, resource_prefix
from provisioning.models import (
    DECOMMISSION_REASONS,
    Backup,
    BackupKind,
    BackupReason,
    BackupSchedule,
    BackupState,
    Restore,
    RestoreState,
)
from provisioning.operations import operation_create

logger = logging.getLogger(__name__)


def backup_label(backup: Backup) -> str:
    """The deterministic name of a backup's stored object: a re-run step rewrites (or finds) the same one."""
    return f"{resource_prefix()}-i{backup.instance_id}-{backup.kind}-b{backup.pk}"


def whole_second_up(moment: datetime) -> datetime:
    """``moment`` rounded up to the second: a backup never claims to be older than what it holds, and the
    window is in the whole seconds people pick times in (a datetime-local input)."""
    return moment if not moment.microsecond else moment.replace(microsecond=0) + timedelta(seconds=1)


def backup_keep_days(instance: Instance, reason: str) -> int:
    """How long a backup made for ``reason`` is kept: the archive retention for a decommission's last copies,
    else the instance's schedule (or the hub's default)."""
    if reason in DECOMMISSION_REASONS:
        return settings.CELLHUB["ARCHIVE_RETENTION_DAYS"]
    days = BackupSchedule.objects.filter(instance_id=instance.pk).values_list("retention_days", flat=True).first()
    return days or settings.CELLHUB["BACKUP_RETENTION_DAYS"]


def instance_backup(
    *, instance: Instance, kind: str = BackupKind.DATABASE, requested_by=None, reason: str = BackupReason.ON_DEMAND,
    kinds: list[str] | None = None,
) -> Operation:
    """Queue a backup of the instance's ``kind`` ("database" or "files") — or of every kind in ``kinds``, as ONE
    operation ("Back up now": database and files) — and return its operation.

    A backup operation still queued for the instance takes the kinds on (so "database" then "files" make
    one operation with both); one already running that covers them is returned as is. Raises
    ``Refused`` naming the state unless the instance is running, stopped or upgrading, and
    ``OperationInProgress`` (from ``operation_create``) when a running backup does not cover them or work that
    excludes a backup (a restore, a decommission) is queued or running.
    """
    wanted = list(dict.fromkeys(kinds or [kind]))
    for kind in wanted:
        if kind not in BackupKind.values:
            raise Refused(f"unknown backup kind {kind!r}; choose database or files", field="kind")
    with transaction.atomic():
        locked = Instance.objects.select_for_update().get(pk=instance.pk)
        if locked.state not in BACKUP_STATES:
            raise Refused(
                f"instance {locked.name} is {locked.state}; only a running, stopped or upgrading instance can be "
                "backed up",
                current_state=locked.state,
            )
        if BackupKind.DATABASE in wanted and not locked.database_pool_id:
            raise Refused(f"instance {locked.name} has no database to back up")
        if BackupKind.FILES in wanted and not Share.objects.filter(instance=locked).exists():
            raise Refused(f"instance {locked.name} has no share to back up")
        active = active_operations(locked).filter(kind=OperationKind.BACKUP).select_for_update().first()
        if active is not None:
            covered = list(active.params.get("kinds", []))
            missing = [kind for kind in wanted if kind not in covered]
            if not missing:
                return active
            if active.state == OperationState.QUEUED:
                # The worker claims with a conditional UPDATE, which waits for this row lock: it then sees both.
                active.params = {**active.params, "kinds": [*covered, *missing]}
                Operation.objects.filter(pk=active.pk).update(params=active.params, updated_at=timezone.now())
                return active
        return operation_create(  # refuses while a running backup (or work that excludes one) is in the way
            kind=OperationKind.BACKUP, instance=locked, requested_by=requested_by,
            params={"kinds": [str(kind) for kind in wanted], "reason": str(reason)},
        )


def backup_take(
    *, operation: Operation, instance: Instance, kind: str, reason: str, share: Share | None = None
) -> Backup:
    """Make one backup for ``operation`` and record it; idempotent per (operation, kind, reason).

    A backup this operation already finished is returned as is; an unfinished one is made again under
    the same label. The database is the instance's current one (after a restore, the restored one); the
    share is ``share`` or the instance's. The row says ``running`` while the driver works, ``failed`` with
    the error when it raises (the error is re-raised for the step runner to retry or fail).
    """
    if kind == BackupKind.DATABASE:
        pool = instance.database_pool
        driver = drivers.for_pool(pool)
        target = database_kwargs(instance)
        source = target.get("database") or driver.database_name(instance)
    else:
        share = share or Share.objects.select_related("pool").get(instance=instance)
        pool = share.pool
        driver = drivers.for_pool(pool)
        source = share.name
    backup, _ = Backup.objects.get_or_create(
        operation=operation, kind=kind, reason=reason, defaults={"instance": instance, "pool": pool, "source": source}
    )
    if backup.state == BackupState.SUCCEEDED:
        return backup
    Backup.objects.filter(pk=backup.pk).update(
        state=BackupState.RUNNING, started_at=timezone.now(), finished_at=None, error="", pool=pool, source=source
    )
    label = backup_label(backup)
    try:
        if kind == BackupKind.DATABASE:
            result = driver.backup_database(
                instance=instance, label=label, archive=reason == BackupReason.FINAL, **target
            )
        else:
            result = driver.backup_share(share=share, label=label, archive=reason == BackupReason.ARCHIVE)
    except Exception as error:
        Backup.objects.filter(pk=backup.pk).update(
            state=BackupState.FAILED, finished_at=timezone.now(), error=f"{error.__class__.__name__}: {error}"
        )
        raise
    finished = timezone.now()
    taken_at = whole_second_up(parse_datetime(str(result.extra.get("taken_at", ""))) or finished)
    Backup.objects.filter(pk=backup.pk).update(
        state=BackupState.SUCCEEDED,
        finished_at=finished,
        taken_at=taken_at,
        location=result.location,
        size_bytes=result.size_bytes,
        checksum=result.checksum,
        encrypted_with=result.encrypted_with,
        details={key: value for key, value in result.extra.items() if key != "taken_at"},
        expires_at=finished + timedelta(days=backup_keep_days(instance, reason)),
    )
    backup.refresh_from_db()
    return backup


def _ensure_schedules(now: datetime) -> None:
    """Give every running instance without a schedule one with the hub's defaults, due now."""
    without = Instance.objects.filter(state=InstanceState.RUNNING).exclude(
        Exists(BackupSchedule.objects.filter(instance_id=OuterRef("pk")))
    )
    BackupSchedule.objects.bulk_create(
        [BackupSchedule(instance_id=pk, next_database_at=now, next_files_at=now) for pk in without.values_list(
            "pk", flat=True
        )],
        ignore_conflicts=True,
    )


def backups_run_due(*, now: datetime | None = None) -> list[int]:
    """The scheduled pass: start the backups due by each running instance's schedule; returns operation ids.

    Each schedule is taken with ``FOR UPDATE SKIP LOCKED`` and moved one cadence ahead in the same
    transaction as the backup it starts, so concurrent or repeated passes start each due backup once.
    An instance whose backup cannot start now (another backup running) stays due for the next pass.
    """
    now = now or timezone.now()
    _ensure_schedules(now)
    due = Q(next_database_at__lte=now) | Q(next_files_at__lte=now)
    candidates = BackupSchedule.objects.filter(due, enabled=True, instance__state=InstanceState.RUNNING)
    started = []
    for instance_id in candidates.values_list("instance_id", flat=True):
        with transaction.atomic():
            schedule = (
                BackupSchedule.objects.select_for_update(skip_locked=True)
                .filter(due, pk=instance_id, enabled=True)
                .select_related("instance")
                .first()
            )
            if schedule is None:
                continue  # another pass holds it, or it is no longer due
            kinds = [
                kind for kind, at in ((BackupKind.DATABASE, schedule.next_database_at),
                                      (BackupKind.FILES, schedule.next_files_at)) if at <= now
            ]
            operation, updates = None, {}
            for kind in kinds:
                try:
                    with transaction.atomic():
                        operation = instance_backup(
                            instance=schedule.instance, kind=kind, reason=BackupReason.SCHEDULED
                        )
                except Refused as refusal:
                    logger.info("scheduled %s backup of %s not started: %s", kind, schedule.instance, refusal)
                    continue
                if kind == BackupKind.DATABASE:
                    updates["next_database_at"] = now + timedelta(hours=schedule.database_every_hours)
                else:
                    updates["next_files_at"] = now + timedelta(hours=schedule.files_every_hours)
            if operation is None:
                continue
            BackupSchedule.objects.filter(pk=schedule.pk).update(**updates)
            if operation.pk not in started:
                started.append(operation.pk)
    return started


def _driver_of(backup: Backup):
    return drivers.for_pool(backup.pool)


def backups_expire(*, now: datetime | None = None) -> int:
    """Retention: delete expired backups (their stored objects, the rows stay as ``deleted``) and drop the
    databases restores replaced once their keep period is over; returns how many went.

    Never deleted: the newest usable backup of each kind of an instance not decommissioned (whatever its
    age — if scheduled backups stop, the last good one stays), and a backup a restore is using now.
    A deletion the provider refuses is logged and tried again on the next pass; a backup of a provider whose
    driver declares no ``backup_deletion`` (it keeps and expires its own) is left as it is.
    """
    now = now or timezone.now()
    newer = Backup.objects.filter(
        Q(taken_at__gt=OuterRef("taken_at")) | Q(taken_at=OuterRef("taken_at"), pk__gt=OuterRef("pk")),
        instance_id=OuterRef("instance_id"), kind=OuterRef("kind"), state=BackupState.SUCCEEDED,
    )
    in_use = Restore.objects.filter(backup_id=OuterRef("pk"), state=RestoreState.PENDING)
    expired = (
        Backup.objects.filter(state=BackupState.SUCCEEDED, expires_at__lte=now)
        .filter(Q(Exists(newer)) | Q(instance__state=InstanceState.DECOMMISSIONED))
        .exclude(Exists(in_use))
        .select_related("pool")
    )
    removed = 0
    for backup in expired:
        if not drivers.capabilities(backup.pool.provider).backup_deletion:
            # The provider keeps (and expires) its own backups; the hub's record stays as it is.
            logger.info("backup %s (%s) not deleted: %s keeps its own backups", backup.pk, backup.location,
                        backup.pool.provider)
            continue
        try:
            _driver_of(backup).delete_backup(location=backup.location)
        except DriverError as error:
            logger.warning("backup %s (%s) not deleted: %s", backup.pk, backup.location, error)
            continue
        removed += Backup.objects.filter(pk=backup.pk, state=BackupState.SUCCEEDED).update(
            state=BackupState.DELETED, deleted_at=timezone.now()
        )
    for restore in Restore.objects.filter(
        state=RestoreState.SUCCEEDED, old_dropped_at__isnull=True, keep_old_until__lte=now
    ).exclude(old_database="").select_related("instance__database_pool"):
        try:
            restore_drop_old_database(restore=restore)
        except DriverError as error:
            logger.warning("old database %s of %s not dropped: %s", restore.old_database, restore.instance, error)
            continue
        removed += 1
    return removed


def instance_backup_cancel_schedule(*, instance: Instance) -> None:
    """Stop scheduled backups of an instance (decommission)."""
    BackupSchedule.objects.filter(instance_id=instance.pk).update(enabled=False)

