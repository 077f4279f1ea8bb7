"""The provisioning app's own records: backups, their schedules, restores, which database an instance uses, and
what keeps instances alive and the hub honest: operation watches, health, reconciler findings.

Rows here are written only by the services of ``provisioning.backups`` and the plans they queue
(``provisioning/plans/backup.py``, ``restore.py``, ``decommission.py``), and — for the rows of the last section —
by ``provisioning.operations``, ``.watchdog``, ``.health`` and ``.reconcile``; admin and pages only read them,
except a schedule's cadence, which staff may edit, and the staff decisions on health flags and orphans.
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


class BaseBackup(models.Model):
    """A base backup of a whole managed PostgreSQL pool (``pg_basebackup``): with the WAL archived after it, the
    pool's databases can be recovered to any second from ``taken_at`` on.

    ``checksum`` is the SHA-256 of its ``backup_manifest`` (which holds the SHA-256 of every file); a restore
    checks both before it uses the backup. Written by ``provisioning.backups.base`` only.
    """

    pool = models.ForeignKey("cells.Pool", on_delete=models.PROTECT, related_name="base_backups")
    state = models.CharField(max_length=10, choices=BackupState.choices, default=BackupState.RUNNING, db_index=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    taken_at = models.DateTimeField(null=True, blank=True, help_text="Restorable from this moment on.")
    location = models.CharField(max_length=1000, blank=True)
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    checksum = models.CharField(max_length=128, blank=True, help_text="SHA-256 of the backup's manifest.")
    deleted_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=BackupState.values), name="base_backup_state_valid"),
            models.CheckConstraint(
                condition=~Q(state=BackupState.SUCCEEDED)
                | (Q(location__gt="") & Q(checksum__gt="") & Q(taken_at__isnull=False)),
                name="base_backup_succeeded_is_complete",
            ),
        ]
        indexes = [models.Index(fields=["pool", "state", "taken_at"], name="base_backup_restorable")]

    def __str__(self):
        return f"base backup #{self.pk} of {self.pool}"


class Restore(models.Model):
    """One restore of an instance: a database to a point in time (into a NEW database), or files from a backup.

    A database restore switches the instance to ``new_database`` in one step and keeps ``old_database``
    until ``keep_old_until`` or a confirmation (``old_dropped_at`` says when it went). A files restore
    first backs the share's current content up (``safeguard``), then replaces it with the backup's.
    """

    instance = models.ForeignKey("cells.Instance", on_delete=models.PROTECT, related_name="restores")
    kind = models.CharField(max_length=10, choices=BackupKind.choices)
    state = models.CharField(max_length=10, choices=RestoreState.choices, default=RestoreState.PENDING)
    backup = models.ForeignKey(
        Backup, null=True, blank=True, on_delete=models.PROTECT, related_name="restores",
        help_text="The hub's backup restored from; empty when the provider restores to the second itself.",
    )
    base_backup = models.ForeignKey(
        "BaseBackup", null=True, blank=True, on_delete=models.PROTECT, related_name="restores",
        help_text="A managed PostgreSQL pool: the base backup recovered (with the WAL after it) to the time.",
    )
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
            models.CheckConstraint(
                condition=~Q(kind=BackupKind.FILES) | Q(backup__isnull=False), name="restore_files_has_backup"
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


class InstancePort(models.Model):
    """The port of this machine an instance of a local compute pool listens on (``capabilities.host_ports``).

    The database keeps two instances from ever holding the same port (``port`` is unique); the row goes when the
    instance is decommissioned or its provision is released, which frees the port for another.
    """

    instance = models.OneToOneField("cells.Instance", on_delete=models.CASCADE, primary_key=True,
                                    related_name="host_port")
    port = models.PositiveIntegerField(unique=True)
    allocated_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["port"]

    def __str__(self):
        return str(self.port)


# ---- keeping instances alive and the hub honest (issue 9) ---------------------------------------------------


class OperationWatch(models.Model):
    """What the step runner and the watchdog know about an operation's run beyond its row in ``cells``.

    ``claimed_at``/``worker`` describe the current claim (a worker's attempt: the per-kind time limit counts from
    it). ``requeues`` counts the watchdog's requeues since a person last queued the operation: the watchdog
    requeues once, then fails. The clean-up an operation ended from outside still owes is on the operation itself
    (``Operation.cleanup_state``).
    """

    operation = models.OneToOneField(
        "cells.Operation", on_delete=models.CASCADE, primary_key=True, related_name="watch"
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, help_text="host:pid of the worker holding the claim.")
    requeues = models.PositiveIntegerField(default=0)
    last_requeued_at = models.DateTimeField(null=True, blank=True)
    last_reason = models.TextField(blank=True, help_text="Why the watchdog last requeued or failed it.")

    class Meta:
        ordering = ["-operation_id"]

    def __str__(self):
        return f"watch of operation #{self.operation_id}"


class HealthStatus(models.TextChoices):
    HEALTHY = "healthy", "Healthy"
    UNHEALTHY = "unhealthy", "Unhealthy"
    UNKNOWN = "unknown", "Unknown (the check could not ask)"


class HealthAction(models.TextChoices):
    NONE = "none", "None"
    RESTARTED = "restarted", "Restarted"
    RESTART_FAILED = "restart_failed", "Restart failed"
    WAITING = "waiting", "Waiting before the next restart"
    FLAGGED = "flagged", "Flagged for staff"
    RECOVERED = "recovered", "Recovered"


# Not healthy, or flagged for staff: the health rows /metrics counts.
NEEDS_ATTENTION = ~Q(status=HealthStatus.HEALTHY) | Q(flagged_at__isnull=False)


class InstanceHealth(models.Model):
    """An instance's health now: the last check (when, what it found, what it did), since when it has been in this
    status, restarts made since it was last healthy, and a flag for staff.

    Written only by ``provisioning.health``; staff clear a flag (which allows restarts again) from the admin.
    """

    instance = models.OneToOneField(
        "cells.Instance", on_delete=models.CASCADE, primary_key=True, related_name="health"
    )
    status = models.CharField(max_length=10, choices=HealthStatus.choices, default=HealthStatus.UNKNOWN)
    checked_at = models.DateTimeField(null=True, blank=True)
    detail = models.TextField(blank=True)
    unhealthy_since = models.DateTimeField(null=True, blank=True)
    restart_attempts = models.PositiveIntegerField(default=0, help_text="Restarts since it was last healthy.")
    last_restart_at = models.DateTimeField(null=True, blank=True)
    flagged_at = models.DateTimeField(null=True, blank=True, db_index=True)
    flag_reason = models.TextField(blank=True)
    checking_since = models.DateTimeField(null=True, blank=True, help_text="A check of it is under way since then.")
    action = models.CharField(max_length=16, choices=HealthAction.choices, default=HealthAction.NONE,
                              help_text="What the last check did about it.")
    since = models.DateTimeField(null=True, blank=True, help_text="In this status since (the check that found it).")

    class Meta:
        ordering = ["instance_id"]
        verbose_name_plural = "instance health"
        constraints = [
            models.CheckConstraint(condition=Q(status__in=HealthStatus.values), name="instance_health_status_valid"),
        ]
        # The few that need attention (/metrics counts them through this index, never every instance's row).
        indexes = [models.Index(fields=["instance"], condition=NEEDS_ATTENTION, name="health_needs_attention")]

    def __str__(self):
        return f"{self.instance}: {self.status}"


class HealthCheck(models.Model):
    """A change of one instance's health: a check that found another status than the one before, or that did
    something about it (restarted, flagged, began waiting, saw it recover). Checks that find what the one before
    found leave no row (``InstanceHealth.checked_at`` says when it was last checked). History, pruned after
    ``HEALTH_HISTORY_DAYS``."""

    instance = models.ForeignKey("cells.Instance", on_delete=models.CASCADE, related_name="health_checks")
    checked_at = models.DateTimeField(default=timezone.now, db_index=True)
    status = models.CharField(max_length=10, choices=HealthStatus.choices)
    action = models.CharField(max_length=16, choices=HealthAction.choices, default=HealthAction.NONE)
    detail = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-checked_at", "-id"]
        verbose_name = "health change"
        constraints = [
            models.CheckConstraint(condition=Q(status__in=HealthStatus.values), name="health_check_status_valid"),
            models.CheckConstraint(condition=Q(action__in=HealthAction.values), name="health_check_action_valid"),
        ]
        indexes = [models.Index(fields=["instance", "-checked_at"], name="health_check_latest")]

    def __str__(self):
        return f"{self.instance} {self.status} at {self.checked_at:%Y-%m-%d %H:%M:%S}"


class OrphanKind(models.TextChoices):
    DATABASE = "database", "Database"
    SHARE = "share", "Share (bucket / file share / folder)"
    DEPLOYMENT = "deployment", "Deployment"
    DNS_RECORD = "dns_record", "DNS record"


class OrphanDirection(models.TextChoices):
    UNCLAIMED = "unclaimed", "A resource no instance has"
    MISSING = "missing", "An instance whose resource is missing"


class OrphanState(models.TextChoices):
    OPEN = "open", "Open"
    CONFIRMED = "confirmed", "Confirmed by staff (clean-up failed; repeatable)"
    CLEANED = "cleaned", "Cleaned up"
    DISMISSED = "dismissed", "Dismissed by staff"
    RESOLVED = "resolved", "Resolved (no longer found)"


ORPHAN_OPEN_STATES = frozenset({OrphanState.OPEN, OrphanState.CONFIRMED})


class Orphan(models.Model):
    """A disagreement the reconciler found between what the drivers report and the hub's rows.

    ``unclaimed``: a resource (database, share, deployment, DNS record) that no live instance or share row claims;
    staff may clean it up (deleted through its driver) only after confirming. ``missing``: a running or stopped
    instance whose resource is not there; flagged, never fixed automatically. ``key`` names the finding across
    passes: a later pass that finds it again touches ``last_seen_at``; one that no longer finds it resolves it.
    """

    key = models.CharField(max_length=500)
    kind = models.CharField(max_length=12, choices=OrphanKind.choices)
    direction = models.CharField(max_length=10, choices=OrphanDirection.choices)
    resource_name = models.CharField(max_length=500)
    pool = models.ForeignKey("cells.Pool", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    region = models.ForeignKey("cells.Region", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    instance = models.ForeignKey(
        "cells.Instance", null=True, blank=True, on_delete=models.CASCADE, related_name="orphans"
    )
    state = models.CharField(max_length=10, choices=OrphanState.choices, default=OrphanState.OPEN, db_index=True)
    detail = models.TextField(blank=True)
    found_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    confirmed_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, help_text="Why it was dismissed, or what the clean-up did.")
    error = models.TextField(blank=True, help_text="Why the last clean-up failed.")

    class Meta:
        ordering = ["-found_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=OrphanKind.values), name="orphan_kind_valid"),
            models.CheckConstraint(condition=Q(direction__in=OrphanDirection.values), name="orphan_direction_valid"),
            models.CheckConstraint(condition=Q(state__in=OrphanState.values), name="orphan_state_valid"),
            # A clean-up is only ever confirmed for a resource no instance has.
            models.CheckConstraint(
                condition=Q(direction=OrphanDirection.UNCLAIMED)
                | ~Q(state__in=[OrphanState.CONFIRMED, OrphanState.CLEANED]),
                name="orphan_only_unclaimed_cleaned",
            ),
            models.UniqueConstraint(
                fields=["key"], condition=Q(state__in=sorted(str(s) for s in ORPHAN_OPEN_STATES)),
                name="orphan_one_open_per_key",
            ),
        ]

    def __str__(self):
        return f"{self.get_kind_display()} {self.resource_name} ({self.get_direction_display().lower()})"
