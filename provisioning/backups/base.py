"""Base backups of the managed PostgreSQL pools: with the WAL archived after them, what a restore to any second
starts from. ``pool_base_backup`` takes one now; ``base_backups_run_due`` is the scheduler's pass."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from cells.choices import PoolKind, PoolStatus
from cells.models import Pool
from provisioning import drivers
from provisioning.backups.selectors import point_in_time_supported
from provisioning.drivers.base import DriverError, resource_prefix
from provisioning.models import BackupState, BaseBackup

logger = logging.getLogger(__name__)


def _whole_second_up(moment: datetime) -> datetime:
    return moment if not moment.microsecond else moment.replace(microsecond=0) + timedelta(seconds=1)


def pool_base_backup(*, pool: Pool) -> BaseBackup:
    """Take a base backup of ``pool`` (a managed PostgreSQL pool) now and record it with its checksum.

    Returns the row: succeeded, or failed with the error (the driver's ``DriverError`` is re-raised after it is
    recorded). ``taken_at`` is when the backup finished, rounded up to the second: restorable from then on.
    """
    base = BaseBackup.objects.create(pool=pool)
    label = f"{resource_prefix()}-p{pool.pk}-base{base.pk}"
    try:
        result = drivers.for_pool(pool).base_backup(label=label)
    except DriverError as error:
        BaseBackup.objects.filter(pk=base.pk).update(state=BackupState.FAILED, finished_at=timezone.now(),
                                                     error=f"{error.__class__.__name__}: {error}")
        raise
    finished = timezone.now()
    taken_at = _whole_second_up(parse_datetime(str(result.extra.get("taken_at", ""))) or finished)
    BaseBackup.objects.filter(pk=base.pk).update(
        state=BackupState.SUCCEEDED, finished_at=finished, taken_at=taken_at, location=result.location,
        size_bytes=result.size_bytes, checksum=result.checksum,
    )
    base.refresh_from_db()
    return base


def base_backups_run_due(*, now: datetime | None = None) -> list[int]:
    """Take a base backup of every available pool that restores to any second from base backups and has none
    newer than ``BASE_BACKUP_EVERY_HOURS``; returns the new rows' ids. A failure is logged and tried next pass."""
    now = now or timezone.now()
    every = timedelta(hours=settings.CELLHUB["BASE_BACKUP_EVERY_HOURS"])
    taken = []
    for pool in Pool.objects.filter(kind=PoolKind.DATABASE, status=PoolStatus.AVAILABLE).order_by("pk"):
        driver = drivers.for_pool(pool)
        if not point_in_time_supported(pool) or not hasattr(driver, "base_backup"):
            continue
        if BaseBackup.objects.filter(pool=pool, state=BackupState.SUCCEEDED, taken_at__gt=now - every).exists():
            continue
        try:
            taken.append(pool_base_backup(pool=pool).pk)
        except DriverError as error:
            logger.warning("base backup of pool %s failed: %s", pool, error)
    return taken
