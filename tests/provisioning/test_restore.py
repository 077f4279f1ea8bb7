"""Point-in-time restore into a NEW database, switched to in one step; files restored from a backup."""
import time
from datetime import timedelta

import psycopg
import pytest
import yaml
from django.utils import timezone

from cells.choices import InstanceState, OperationState, PoolKind, Provider
from cells.errors import Refused
from cells.models import Instance, Operation
from provisioning import crypto, drivers, faults
from provisioning.backups import (
    backups_expire,
    instance_restore,
    instance_restore_confirm,
    instance_restore_files,
    restorable_window,
)
from provisioning.drivers.base import Capabilities
from provisioning.models import (
    Backup,
    BackupKind,
    BackupReason,
    BackupState,
    InstanceDatabase,
    Restore,
    RestoreState,
)
from provisioning.operations import operation_retry
from tests.factories import make_instance, make_pool
from tests.provisioning import test_backups as shared
from tests.provisioning.test_backups import (
    back_up,
    finished,
    postgres_connect,
    share_path,
    signup,
    sqlite_file,
    sqlite_rows,
    sqlite_write,
    write_files,
)

pytestmark = pytest.mark.django_db
# Fixtures shared with the backup tests (pytest finds them by name in this module).
backup_key = shared.backup_key
postgres_cell = shared.postgres_cell
run = shared.run
sqlite_cell = shared.sqlite_cell


def _after(moment) -> None:
    """Wait until the clock has passed ``moment`` (backups are stamped to the whole second, rounded up)."""
    while timezone.now() <= moment:
        time.sleep(0.05)


def _deployed_database_url(instance) -> str:
    compute = drivers.for_pool(instance.compute_pool)
    documents = list(yaml.safe_load_all(compute.manifest_path(instance).read_text()))
    return next(d for d in documents if d["kind"] == "Secret")["stringData"]["DATABASE_URL"]


def _rows(instance, database=None) -> list[str]:
    with postgres_connect(instance, database) as connection:
        return [row[0] for row in connection.execute("SELECT body FROM test_rows ORDER BY body")]


def _rows_the_deployment_sees(instance) -> list[str]:
    """Connect with the very URL the instance's deployment was given."""
    with psycopg.connect(_deployed_database_url(instance).replace("postgresql://", "postgres://")) as connection:
        return [row[0] for row in connection.execute("SELECT body FROM test_rows ORDER BY body")]


def test_postgres_restore_to_a_time_between_two_writes_brings_back_only_the_first(run, postgres_cell):
    instance = signup(run, postgres_cell)
    driver = drivers.for_pool(instance.database_pool)
    original = driver.database_name(instance)
    with postgres_connect(instance) as connection:  # the instance's own login writes
        connection.execute("CREATE TABLE test_rows (body text)")
        connection.execute("INSERT INTO test_rows VALUES ('first-1'), ('first-2')")
    point = Backup.objects.get(operation=back_up(run, instance)).taken_at
    _after(point)
    with postgres_connect(instance) as connection:
        connection.execute("INSERT INTO test_rows VALUES ('second-1')")
    back_up(run, instance)
    assert restorable_window(instance=instance)[0] == point

    operation = finished(run(instance_restore, instance=instance, point_in_time=point))
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert operation.done_step_names == ["verify", "safeguard", "restore", "activate"]
    restore = Restore.objects.get(operation=operation)
    assert restore.state == RestoreState.SUCCEEDED and restore.backup.taken_at == point
    assert restore.new_database == f"{original}_r{restore.pk}" and restore.old_database == original
    assert restore.keep_old_until > timezone.now() + timedelta(days=6)

    # The instance uses the NEW database, which holds only the first rows; its deployment points at it.
    assert InstanceDatabase.objects.get(instance=instance).name == restore.new_database
    assert _rows_the_deployment_sees(instance) == ["first-1", "first-2"]
    assert _deployed_database_url(instance) == driver.credentials(instance, database=restore.new_database).url
    assert f"/{restore.new_database}" in _deployed_database_url(instance)
    # The old one is kept, untouched, until confirmed.
    assert _rows(instance, original) == ["first-1", "first-2", "second-1"]

    # Backups now take the database in use.
    after = Backup.objects.get(operation=back_up(run, instance))
    assert after.source == restore.new_database

    assert instance_restore_confirm(instance=instance) == [original]
    assert not driver.database_exists(instance=instance, database=original)
    assert _rows_the_deployment_sees(instance) == ["first-1", "first-2"]  # the login survives
    restore.refresh_from_db()
    assert restore.old_dropped_at is not None
    with pytest.raises(Refused, match="nothing to confirm"):
        instance_restore_confirm(instance=instance)


def test_sqlite_restore_switches_and_retention_drops_the_old_file(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    live = sqlite_file(instance)
    sqlite_write(live, "first")
    point = Backup.objects.get(operation=back_up(run, instance)).taken_at
    _after(point)
    sqlite_write(live, "second")
    back_up(run, instance)

    operation = finished(run(instance_restore, instance=instance, point_in_time=point))
    assert operation.state == OperationState.SUCCEEDED, operation.error
    restore = Restore.objects.get(operation=operation)
    restored = sqlite_file(instance, restore.new_database)
    assert restored != live and sqlite_rows(restored) == ["first"] and sqlite_rows(live) == ["first", "second"]
    assert _deployed_database_url(instance) == f"sqlite:///{restored}"
    assert restored.stat().st_mode & 0o777 == 0o600

    assert backups_expire(now=timezone.now() + timedelta(days=6)) == 0 and live.exists()
    assert backups_expire(now=timezone.now() + timedelta(days=8)) == 1
    assert not live.exists() and restored.exists()


def test_a_failed_switch_leaves_the_instance_on_its_database_and_a_retry_finishes(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    live = sqlite_file(instance)
    sqlite_write(live, "first")
    point = Backup.objects.get(operation=back_up(run, instance)).taken_at
    before = _deployed_database_url(instance)
    faults.arm("restore.activate.before", "permanent")

    operation = finished(run(instance_restore, instance=instance, point_in_time=point))
    restore = Restore.objects.get(operation=operation)
    assert operation.state == OperationState.FAILED and "restore.activate.before" in operation.error
    assert "still uses database" in operation.error and operation.steps == []
    assert restore.state == RestoreState.FAILED
    assert not InstanceDatabase.objects.filter(instance=instance).exists()
    assert not sqlite_file(instance, restore.new_database).exists()  # the unfinished new database is gone
    assert _deployed_database_url(instance) == before and live.exists()

    run(operation_retry, operation=operation)
    operation.refresh_from_db()
    restore.refresh_from_db()
    assert operation.state == OperationState.SUCCEEDED and restore.state == RestoreState.SUCCEEDED
    assert InstanceDatabase.objects.get(instance=instance).name == restore.new_database


def test_files_restore_brings_back_the_backup_and_keeps_what_it_replaced(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    root = share_path(instance)
    storage = drivers.for_pool(instance.share.pool)
    write_files(root, {"config.json": b'{"a": 1}', "packages/app-1.0.zip": b"\x00" * 5000, "logs/today.log": b"x"})
    (root / "empty").mkdir()
    wanted = storage.share_listing(share=instance.share)
    backup = Backup.objects.get(operation=back_up(run, instance, BackupKind.FILES))

    (root / "packages" / "app-1.0.zip").unlink()
    write_files(root, {"config.json": b'{"a": 2}', "new.txt": b"added later"})
    changed = storage.share_listing(share=instance.share)

    operation = finished(run(instance_restore_files, instance=instance, backup=backup))
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert storage.share_listing(share=instance.share) == wanted
    restore = Restore.objects.get(operation=operation)
    assert restore.safeguard.reason == BackupReason.PRE_RESTORE and restore.safeguard.details["files"] == 3

    # The safeguard holds what the restore replaced.
    storage.unpack_archive(location=restore.safeguard.location, target=root.parent / "check")
    unpacked = {
        p.relative_to(root.parent / "check").as_posix() for p in (root.parent / "check").rglob("*") if p.is_file()
    }
    assert unpacked == {name for name, value in changed.items() if value != "dir"}


def test_restore_refusals_name_the_reason_and_start_nothing(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    with pytest.raises(Refused, match="no database backup to restore from yet") as refusal:
        instance_restore(instance=instance, point_in_time=timezone.now())
    assert refusal.value.field == "point_in_time"
    backup = Backup.objects.get(operation=back_up(run, instance))
    start, end = restorable_window(instance=instance)
    with pytest.raises(Refused, match="outside the restorable window"):
        instance_restore(instance=instance, point_in_time=start - timedelta(seconds=1))
    with pytest.raises(Refused, match="outside the restorable window"):
        instance_restore(instance=instance, point_in_time=end + timedelta(seconds=1))
    with pytest.raises(Refused, match="time zone"):
        instance_restore(instance=instance, point_in_time=end.replace(tzinfo=None))
    with pytest.raises(Refused, match="not a files backup"):
        instance_restore_files(instance=instance, backup=backup)
    other = signup(run, sqlite_cell, "other")
    theirs = Backup.objects.get(operation=back_up(run, other, BackupKind.FILES))
    with pytest.raises(Refused, match="not a files backup of instance acme"):
        instance_restore_files(instance=instance, backup=theirs)
    Instance.objects.filter(pk=instance.pk).update(state=InstanceState.DECOMMISSIONED)
    with pytest.raises(Refused, match="is decommissioned;"):
        instance_restore(instance=instance, point_in_time=end)
    assert not Restore.objects.exists()


def test_restore_is_refused_on_a_provider_that_cannot_switch(monkeypatch):
    # Every database provider switches now (RDS too): take RDS's declaration away to see the refusal.
    monkeypatch.setattr(drivers.driver_class(Provider.AWS_RDS), "capabilities", Capabilities(database_restore=True))
    pool = make_pool(kind=PoolKind.DATABASE, provider=Provider.AWS_RDS)
    instance = make_instance(state=InstanceState.RUNNING, database_pool=pool, reef=pool.reef)
    with pytest.raises(Refused, match=r"not available yet .*\(AWS RDS"):
        instance_restore(instance=instance, point_in_time=timezone.now())


def test_a_restore_to_t_uses_the_latest_database_backup_at_or_before_t():
    """Three database backups with known moments, T between the second and the third: the second is restored (not
    the first, which is also before T, nor the third, which is after it)."""
    pool = make_pool(kind=PoolKind.DATABASE)  # SQLite without Litestream: a restore brings a backup back
    instance = make_instance(state=InstanceState.RUNNING, database_pool=pool, reef=pool.reef)
    first_at = timezone.now().replace(microsecond=0) - timedelta(hours=3)
    second_at, third_at = first_at + timedelta(hours=1), first_at + timedelta(hours=2)

    def backup(taken_at, kind=BackupKind.DATABASE, **fields):
        return Backup.objects.create(
            instance=instance, kind=kind, pool=pool, state=BackupState.SUCCEEDED, taken_at=taken_at,
            finished_at=taken_at, location=f"file:///backups/{kind}-{taken_at:%H%M%S}", checksum="0" * 64, **fields,
        )

    # Made out of order, so neither the ids nor the creation order point at the right one.
    backup(third_at)
    second = backup(second_at)
    backup(first_at)
    # Between the second and T: a files backup and a failed database backup, neither of which holds the database.
    backup(second_at + timedelta(minutes=20), kind=BackupKind.FILES)
    Backup.objects.create(instance=instance, kind=BackupKind.DATABASE, pool=pool, state=BackupState.FAILED,
                          taken_at=second_at + timedelta(minutes=25))

    point = second_at + timedelta(minutes=30)
    operation = instance_restore(instance=instance, point_in_time=point)
    restore = Restore.objects.get(operation=operation)
    assert restore.backup_id == second.pk and restore.point_in_time == point
    # Exactly at a backup's moment, that backup is the one ("at or before").
    Restore.objects.filter(pk=restore.pk).update(state=RestoreState.SUCCEEDED)
    Operation.objects.filter(pk=operation.pk).update(state=OperationState.SUCCEEDED)
    at_third = Restore.objects.get(operation=instance_restore(instance=instance, point_in_time=third_at))
    assert at_third.backup.taken_at == third_at


def test_a_backup_whose_checksum_does_not_match_is_refused_before_anything_is_written(run, sqlite_cell):
    """The older backup's file replaced by the newer one's (a valid file under the current key, so it decrypts
    fine, but not what was recorded): the restore to the older backup's moment is refused by its checksum, and no
    new database exists, the Restore is not left running and the instance keeps its live database."""
    instance = signup(run, sqlite_cell)
    live = sqlite_file(instance)
    sqlite_write(live, "first")
    older = Backup.objects.get(operation=back_up(run, instance))
    _after(older.taken_at)
    sqlite_write(live, "second")
    newer = Backup.objects.get(operation=back_up(run, instance))
    older_file, newer_file = crypto.local_file(older.location), crypto.local_file(newer.location)
    older_file.write_bytes(newer_file.read_bytes())

    operation = finished(run(instance_restore, instance=instance, point_in_time=older.taken_at))
    restore = Restore.objects.get(operation=operation)
    assert restore.backup_id == older.pk
    assert operation.state == OperationState.FAILED
    assert "does not match its recorded checksum" in operation.error and "nothing was restored" in operation.error
    restore.refresh_from_db()
    assert restore.state == RestoreState.FAILED
    assert not sqlite_file(instance, restore.new_database).exists()
    assert not InstanceDatabase.objects.filter(instance=instance).exists()
    assert _deployed_database_url(instance) == f"sqlite:///{live}"
    assert sqlite_rows(live) == ["first", "second"]
