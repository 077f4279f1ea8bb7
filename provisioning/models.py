"""The provisioning app's own records: backups, their schedules, restores, and which database an instance uses.

Rows here are written only by the services of ``provisioning.backups`` and the plans they queue
(``provisioning/plans/backup.py``, ``restore.py``, ``decommission.py``); admin and pages only read them,
except a schedule's cadence, which staff may edit.
"""
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class BackupKind(models.TextChoices):
    DATABASE = "database", "Database"
    FILES = "files", "Files"


class BackupState(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    DELETED = "deleted", "Deleted (retention)"


class BackupReason(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    ON_DEMAND = "on_demand", "On demand"
    PRE_RESTORE = "pre_restore", "Before a files restore"
    FINAL = "final", "Final (decommission)"
    ARCHIVE = "archive", "Share archive (decommission)"
    PRE_UPGRADE = "pre_upgrade", "Before an upgrade"


class RestoreState(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


# A decommissioned instance's last copies are kept for ARCHIVE_RETENTION_DAYS, the others for the schedule's.
DECOMMISSION_REASONS = frozenset({BackupReason.FINAL, BackupReason.ARCHIVE})


def _default_every_hours() -> int:
    return settings.CELLHUB["BACKUP_FULL_EVERY_HOURS"]


def _default_retention_days() -> int:
    return settings.CELLHUB["BACKUP_RETENTION_DAYS"]


class Backup(models.Model):
    """One backup of an instance's database or share: where it is, what it holds, how it is protected.

    ``taken_at`` is the moment the content is from (a database backup holds nothing committed after it);
    a point-in-time restore picks the latest succeeded database backup taken at or before the chosen time.
    ``checksum`` is the SHA-256 of the stored object (the encrypted file on the local drivers).
    A backup past ``expires_at`` is deleted by retention and kept as a ``deleted`` row for the record.
    """

    instance = models.ForeignKey("cells.Instance", on_delete=models.PROTECT, related_name="backups")
    kind = models.CharField(max_length=10, choices=BackupKind.choices)
    reason = models.CharField(max_length=12, choices=BackupReason.choices, default=BackupReason.ON_DEMAND)
    state = models.CharField(max_length=10, choices=BackupState.choices, default=BackupState.RUNNING, db_index=True)
    pool = models.ForeignKey(
        "cells.Pool", on_delete=models.PROTECT, related_name="backups",
        help_text="The database or storage pool whose driver made the backup and deletes it.",
    )
    operation = models.ForeignKey(
        "cells.Operation", null=True, blank=True, on_delete=models.SET_NULL, related_name="backups"
    )
    source = models.CharField(max_length=255, blank=True, help_text="The database or share backed up.")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    taken_at = models.DateTimeField(null=True, blank=True, help_text="The content is as it was at this moment.")
    location = models.CharField(max_length=1000, blank=True, help_text="URI of the stored backup.")
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    checksum = models.CharField(max_length=128, blank=True, help_text="SHA-256 of the stored object.")
    encrypted_with = models.CharField(max_length=500, blank=True, help_text="Key id, KMS key or provider scheme.")
    expires_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=BackupKind.values), name="backup_kind_valid"),
            models.CheckConstraint(condition=Q(state__in=BackupState.values), name="backup_state_valid"),
            models.CheckConstraint(condition=Q(reason__in=BackupReason.values), name="backup_reason_valid"),
            # A usable backup says where it is and what moment it holds.
            models.CheckConstraint(
                condition=~Q(state=BackupState.SUCCEEDED)
                | (Q(location__gt="") & Q(finished_at__isnull=False) & Q(taken_at__isnull=False)),
                name="backup_succeeded_is_complete",
            ),
            # One backup per kind and reason per operation: a re-run step finds the row it started.
            models.UniqueConstraint(
                fields=["operation", "kind", "reason"],
                condition=Q(operation__isnull=False),
                name="backup_one_per_operation_kind_reason",
            ),
        ]
        indexes = [
            models.Index(fields=["instance", "kind", "state", "taken_at"], name="backup_restorable"),
            models.Index(fields=["state", "expires_at"], name="backup_expiry"),
        ]

    def __str__(self):
        return f"{self.kind} backup #{self.pk}"

    @property
    def usable(self) -> bool:
        return self.state == BackupState.SUCCEEDED


class BackupSchedule(models.Model):
    """How often an instance is backed up and how long its backups are kept.

    The scheduled pass starts a backup of each kind whose ``next_*_at`` has come and moves it one cadence
    ahead in the same transaction, so a second pass starts nothing until the next one is due. Rows are
    created by the pass for every running instance; staff change the cadence in the admin.
    """

    instance = models.OneToOneField(
        "cells.Instance", on_delete=models.CASCADE, primary_key=True, related_name="backup_schedule"
    )
    enabled = models.BooleanField(default=True)
    database_every_hours = models.PositiveIntegerField(default=_default_every_hours)
    files_every_hours = models.PositiveIntegerField(default=_default_every_hours)
    retention_days = models.PositiveIntegerField(default=_default_retention_days)
    next_database_at = models.DateTimeField(default=timezone.now, db_index=True)
    next_files_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["instance_id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(database_every_hours__gte=1, files_every_hours__gte=1), name="backup_schedule_cadence"
            ),
            models.CheckConstraint(condition=Q(retention_days__gte=1), name="backup_schedule_retention"),
        ]

    def __str__(self):
        return f"backups of {self.instance}"


class Restore(models.Model):
    """One restore of an instance: a database to a point in time (into a NEW database), or files from a backup.

    A database restore switches the instance to ``new_database`` in one step and keeps ``old_database``
    until ``keep_old_until`` or a confirmation (``old_dropped_at`` says when it went). A files restore
    first backs the share's current content up (``safeguard``), then replaces it with the backup's.
    """

    instance = models.ForeignKey("cells.Instance", on_delete=models.PROTECT, related_name="restores")
    kind = models.CharField(max_length=10, choices=BackupKind.choices)
    state = models.CharField(max_length=10, choices=RestoreState.choices, default=RestoreState.PENDING)
    backup = models.ForeignKey(Backup, on_delete=models.PROTECT, related_name="restores")
    point_in_time = models.DateTimeField(null=True, blank=True, help_text="The moment asked for (database).")
    operation = models.ForeignKey(
        "cells.Operation", null=True, blank=True, on_delete=models.SET_NULL, related_name="restores"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    new_database = models.CharField(max_length=255, blank=True)
    old_database = models.CharField(max_length=255, blank=True, help_text="The replaced database, kept for a while.")
    safeguard = models.ForeignKey(
        Backup, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Files: the backup of what the restore replaced.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    keep_old_until = models.DateTimeField(null=True, blank=True)
    old_dropped_at = models.DateTimeField(null=True, blank=True)
    confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=BackupKind.values), name="restore_kind_valid"),
            models.CheckConstraint(condition=Q(state__in=RestoreState.values), name="restore_state_valid"),
            models.CheckConstraint(
                condition=~Q(kind=BackupKind.DATABASE) | Q(point_in_time__isnull=False),
                name="restore_database_has_point_in_time",
            ),
        ]
        indexes = [models.Index(fields=["old_dropped_at", "keep_old_until"], name="restore_kept_old")]

    def __str__(self):
        return f"{self.kind} restore #{self.pk} of {self.instance}"

    @property
    def keeps_old_database(self) -> bool:
        return bool(self.old_database) and self.old_dropped_at is None and self.state == RestoreState.SUCCEEDED


class InstanceDatabase(models.Model):
    """The database an instance uses when it is no longer the one its id names: set by a restore's switch.

    No row means the driver's derived name (``DatabaseDriver.database_name``); the database is always in
    the instance's ``database_pool``.
    """

    instance = models.OneToOneField(
        "cells.Instance", on_delete=models.CASCADE, primary_key=True, related_name="current_database"
    )
    name = models.CharField(max_length=255)
    restore = models.ForeignKey(Restore, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["instance_id"]

    def __str__(self):
        return self.name
