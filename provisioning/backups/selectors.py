"""Reads about backups and restores: which database an instance uses, what can be restored, what a page shows."""
from __future__ import annotations

from datetime import datetime

from django.db.models import Max, Min, QuerySet

from cells.choices import OPERATION_ACTIVE_STATES, InstanceState, OperationKind
from cells.errors import Refused
from cells.models import Instance, Operation
from provisioning import drivers
from provisioning.models import Backup, BackupKind, BackupState, InstanceDatabase, Restore, RestoreState
from provisioning.operations import operation_progress

# States in which an instance's data may be backed up or restored (it has a database and a share, and no
# decommission has begun).
BACKUP_STATES = frozenset({InstanceState.RUNNING, InstanceState.STOPPED, InstanceState.UPGRADING})
RESTORE_STATES = frozenset({InstanceState.RUNNING, InstanceState.STOPPED})
LIFECYCLE_KINDS = (OperationKind.BACKUP, OperationKind.RESTORE, OperationKind.DECOMMISSION)


def database_restore_supported(provider: str) -> bool:
    """Whether an instance on ``provider`` can be restored to a point in time: its driver declares that it
    restores into a new database and that the instance can then be switched to it (``database=``)."""
    capabilities = drivers.capabilities(provider)
    return capabilities.database_restore and capabilities.database_switching


def file_restore_supported(provider: str) -> bool:
    """Whether a share on ``provider`` can get its content back from a files backup (its driver declares it)."""
    return drivers.capabilities(provider).file_restore


def current_database(instance: Instance) -> str | None:
    """The database the instance uses when a restore switched it away from its derived one; None otherwise."""
    return InstanceDatabase.objects.filter(instance_id=instance.pk).values_list("name", flat=True).first()


def database_kwargs(instance: Instance) -> dict:
    """Arguments that point a database driver call at the instance's current database.

    Empty for an instance no restore has switched, so every driver (the clouds' too) is called exactly as
    before; ``{"database": name}`` after a restore (only drivers that support it are ever switched).
    """
    name = current_database(instance)
    return {"database": name} if name else {}


def instance_database_credentials(*, instance: Instance):
    """How the instance reaches its current database (the one a restore switched to, if any), with its password.

    Never store or log the result. Raises ``Refused`` (naming the instance's state) when the instance has no
    database, and the driver's ``DriverError`` when the pool does not answer.
    """
    if instance.database_pool_id is None:
        raise Refused(f"{instance.name} has no database", current_state=instance.state)
    return drivers.for_pool(instance.database_pool).credentials(instance, **database_kwargs(instance))


def usable_backups(instance: Instance, kind: str | None = None) -> QuerySet:
    """The instance's succeeded, not yet deleted backups, newest first."""
    queryset = Backup.objects.filter(instance=instance, state=BackupState.SUCCEEDED)
    if kind:
        queryset = queryset.filter(kind=kind)
    return queryset.order_by("-taken_at", "-id")


def restorable_window(*, instance: Instance) -> tuple[datetime, datetime] | None:
    """[oldest kept database backup, latest database backup] by the moment they hold; None without any.

    Restoring to a time T uses the latest database backup taken at or before T.
    """
    bounds = usable_backups(instance, BackupKind.DATABASE).aggregate(start=Min("taken_at"), end=Max("taken_at"))
    if bounds["start"] is None:
        return None
    return bounds["start"], bounds["end"]


def backup_for_point_in_time(*, instance: Instance, point_in_time: datetime) -> Backup | None:
    """The latest usable database backup taken at or before ``point_in_time``."""
    return usable_backups(instance, BackupKind.DATABASE).filter(taken_at__lte=point_in_time).first()


def kept_old_databases(instance: Instance) -> QuerySet:
    """Restores whose replaced database is still kept (until confirmed or its retention passes)."""
    return Restore.objects.filter(
        instance=instance, state=RestoreState.SUCCEEDED, old_dropped_at__isnull=True
    ).exclude(old_database="").order_by("created_at", "id")


def active_operations(instance: Instance) -> QuerySet:
    return Operation.objects.filter(instance=instance, state__in=[str(s) for s in OPERATION_ACTIVE_STATES])


def instance_backup_overview(instance: Instance, *, limit: int = 20) -> dict:
    """What the customer's and staff's pages show about an instance's backups, restores and lifecycle work."""
    backups = list(
        Backup.objects.filter(instance=instance).exclude(state=BackupState.DELETED).order_by("-started_at", "-id")[
            :limit
        ]
    )
    operations = list(
        Operation.objects.filter(instance=instance, kind__in=LIFECYCLE_KINDS).order_by("-created_at", "-id")[:10]
    )
    return {
        "backups": backups,
        "files_backups": [b for b in backups if b.kind == BackupKind.FILES and b.state == BackupState.SUCCEEDED],
        "window": restorable_window(instance=instance),
        "kept": list(kept_old_databases(instance)),
        "operations": [(operation, operation_progress(operation)) for operation in operations],
    }
