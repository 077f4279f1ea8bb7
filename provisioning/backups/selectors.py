"""Reads about backups and restores: which database an instance uses, what can be restored, what a page shows."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from django.db.models import Max, Min, QuerySet
from django.utils import timezone

from cells.choices import OPERATION_ACTIVE_STATES, InstanceState, OperationKind
from cells.errors import Refused
from cells.models import Instance, Operation
from provisioning import drivers
from provisioning.models import (
    Backup,
    BackupKind,
    BackupState,
    BaseBackup,
    InstanceDatabase,
    Restore,
    RestoreState,
)
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


_CURRENT_DATABASE = Instance.current_database.related


def current_database(instance: Instance) -> str | None:
    """The database the instance uses when a restore switched it away from its derived one; None otherwise. Read
    from ``instance`` itself when the query that loaded it joined it (``select_related("current_database")``: no
    query), else looked up."""
    if _CURRENT_DATABASE.is_cached(instance):
        row = _CURRENT_DATABASE.get_cached_value(instance)
        return row.name if row is not None else None
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


class _Span(NamedTuple):
    start: datetime
    end: datetime


class RestorableWindow(_Span):
    """The seconds an instance's database can be restored to: ``start`` to ``end``, both included (a pair, so
    ``start, end = window`` reads it).

    ``continuous`` when the provider restores to any second of it (WAL archiving, Litestream, the clouds'
    point-in-time restore); otherwise a restore to T brings back the latest backup at or before T.
    ``measured_at``: when the provider was asked (the RPO is counted from then).
    """

    def __new__(cls, start: datetime, end: datetime, continuous: bool = False, measured_at: datetime | None = None):
        window = super().__new__(cls, start, end)
        window.continuous, window.measured_at = continuous, measured_at
        return window

    @property
    def rpo(self) -> timedelta:
        """The achieved recovery point: how far the newest restorable second is behind now (never negative)."""
        return max(timedelta(0), (self.measured_at or timezone.now()) - self.end)

    @property
    def rpo_seconds(self) -> int:
        return int(self.rpo.total_seconds())


def point_in_time_supported(pool) -> bool:
    """Whether ``pool`` restores to any second (its driver's ``pool_capabilities().point_in_time_restore``)."""
    return pool is not None and drivers.for_pool(pool).pool_capabilities().point_in_time_restore


def base_backups(pool) -> QuerySet:
    """A managed pool's succeeded base backups, newest first."""
    return BaseBackup.objects.filter(pool=pool, state=BackupState.SUCCEEDED).order_by("-taken_at", "-id")


def base_backup_for_point_in_time(*, pool, point_in_time: datetime) -> BaseBackup | None:
    """The LATEST succeeded base backup of ``pool`` taken at or before ``point_in_time`` (never an older one:
    the less WAL to replay, the faster the restore)."""
    return base_backups(pool).filter(taken_at__lte=point_in_time).first()


def restorable_window(*, instance: Instance) -> RestorableWindow | None:
    """The instance's restorable window, and with it the achieved RPO; None when nothing can be restored yet.

    On a pool that restores to any second (``point_in_time_supported``): from the provider's earliest
    restorable second (or, where it keeps none itself, the pool's oldest base backup) to the newest second it
    can restore (asked of the driver: the newest archived WAL, the newest Litestream replica file, ...).
    Elsewhere: [oldest kept database backup, latest database backup] by the moment they hold; restoring to T
    uses the latest database backup taken at or before T. A provider that cannot be asked right now
    (``DriverError``) gives no window rather than a wrong one.
    """
    pool = instance.database_pool
    if point_in_time_supported(pool):
        measured_at = timezone.now()
        try:
            earliest, latest = drivers.for_pool(pool).point_in_time_window(
                instance=instance, **database_kwargs(instance)
            )
        except drivers.DriverError:
            return None
        if earliest is None:
            earliest = base_backups(pool).aggregate(start=Min("taken_at"))["start"]
        if earliest is None or latest is None or latest < earliest:
            return None
        # Whole seconds, inside what is restorable: people pick times to the second.
        start = earliest if not earliest.microsecond else earliest.replace(microsecond=0) + timedelta(seconds=1)
        return RestorableWindow(start, max(start, latest.replace(microsecond=0)), True, measured_at)
    bounds = usable_backups(instance, BackupKind.DATABASE).aggregate(start=Min("taken_at"), end=Max("taken_at"))
    if bounds["start"] is None:
        return None
    return RestorableWindow(bounds["start"], bounds["end"])


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
