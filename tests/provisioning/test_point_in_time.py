"""Restore to any second on a managed PostgreSQL pool (base backups + archived WAL, recovered in a temporary
cluster) — real clusters run as the postgres OS user, on ports 25000-25999."""
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from django.utils import timezone

from cells.choices import OperationState, Provider
from cells.models import Pool
from provisioning import drivers
from provisioning.backups import instance_restore, restorable_window
from provisioning.backups.base import pool_base_backup
from provisioning.backups.selectors import base_backup_for_point_in_time
from provisioning.drivers import postgres_cluster
from provisioning.models import InstanceDatabase, Restore
from tests.factories import make_cell
from tests.provisioning import test_backups as shared
from tests.provisioning.test_backups import finished, postgres_connect, signup, sqlite_file, sqlite_rows, sqlite_write

pytestmark = [pytest.mark.django_db, pytest.mark.slow]
backup_key = shared.backup_key
run = shared.run


@pytest.fixture
def managed_cell(settings):
    """A cell whose database pool is a cluster the hub created (provision_pool), under a var dir the postgres OS
    user can reach; the cluster is deleted (delete_pool) afterwards."""
    var_dir = Path(tempfile.mkdtemp(prefix="cellhub-pitr-", dir="/tmp"))
    var_dir.chmod(0o711)
    settings.CELLHUB = {**settings.CELLHUB, "VAR_DIR": var_dir, "POSTGRES_PORTS": "25000-25999",
                        "POSTGRES_ARCHIVE_TIMEOUT": 1}
    cell = make_cell(capacity=3, database_provider=Provider.POSTGRES)
    pool = cell["database"]
    Pool.objects.filter(pk=pool.pk).update(config={"managed": True})
    pool.refresh_from_db()
    result = drivers.for_pool(pool).provision_pool()
    Pool.objects.filter(pk=pool.pk).update(
        external_id=result["external_id"], config={**pool.config, **result["config"]}
    )
    pool.refresh_from_db()
    cell["database"] = pool
    yield cell
    drivers.for_pool(pool).delete_pool()
    shutil.rmtree(var_dir, ignore_errors=True)


def _write(instance, body):
    with postgres_connect(instance, InstanceDatabase.objects.filter(instance=instance).values_list(
            "name", flat=True).first()) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS test_rows (body text)")
        connection.execute("INSERT INTO test_rows VALUES (%s)", [body])
    return timezone.now()


def _rows(instance, database):
    with postgres_connect(instance, database) as connection:
        return [row[0] for row in connection.execute("SELECT body FROM test_rows ORDER BY body")]


def _temporary_clusters(pool):
    folder = postgres_cluster.root() / f"pool{pool.pk}"
    return sorted(path.name for path in folder.glob("restore-*"))


def _held_ports():
    return sorted(path.read_text() for path in (postgres_cluster.root() / "ports").iterdir())


def test_the_managed_pool_is_a_cluster_of_its_own_archiving_wal(managed_cell):
    pool = managed_cell["database"]
    driver = drivers.for_pool(pool)
    assert 25000 <= pool.config["port"] <= 25999 and pool.external_id == f"postgres://127.0.0.1:{pool.config['port']}"
    assert driver.pool_capabilities().point_in_time_restore
    with driver.cluster().connect() as connection:
        settings_now = dict(connection.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('archive_mode', 'wal_level', 'archive_timeout')"
        ).fetchall())
    assert settings_now == {"archive_mode": "on", "wal_level": "replica", "archive_timeout": "1"}
    driver.cluster().archive_now()
    assert list(driver.cluster().archive.glob("0*"))
    # An external server (no "managed") keeps the dump restore: no point in time.
    assert not drivers.for_pool(Pool(provider=Provider.POSTGRES, config={"host": "127.0.0.1"})).pool_capabilities(
    ).point_in_time_restore


def test_restore_to_any_second_from_the_latest_base_at_or_before_it(run, managed_cell):
    instance = signup(run, managed_cell)
    pool = instance.database_pool
    _write(instance, "t0")
    bases = []
    for _ in range(3):  # taken_at is rounded up to the second: one second apart, so "latest at or before" is exact
        bases.append(pool_base_backup(pool=pool))
        while timezone.now() <= bases[-1].taken_at:
            time.sleep(0.05)
    t1 = _write(instance, "t1")
    time.sleep(2)
    t2 = _write(instance, "t2")
    time.sleep(2)
    t3 = _write(instance, "t3")
    driver = drivers.for_pool(pool)
    driver.cluster().archive_now()

    window = restorable_window(instance=instance)
    assert window.continuous and window.start == bases[0].taken_at and window.end >= t3.replace(microsecond=0)
    # The newest restorable second holds the last write: the RPO is never more than the time since it.
    assert window.rpo_seconds <= (timezone.now() - t3).total_seconds() + 1
    # The latest base at or before T, never an older one.
    assert base_backup_for_point_in_time(pool=pool, point_in_time=t2) == bases[2]
    assert base_backup_for_point_in_time(pool=pool, point_in_time=bases[1].taken_at) == bases[1]

    between_2_and_3 = t2 + (t3 - t2) / 2
    operation = finished(run(instance_restore, instance=instance, point_in_time=between_2_and_3))
    assert operation.state == OperationState.SUCCEEDED, operation.error
    restore = Restore.objects.get(operation=operation)
    assert restore.base_backup == bases[2] and restore.backup is None
    assert _rows(instance, restore.new_database) == ["t0", "t1", "t2"]
    assert InstanceDatabase.objects.get(instance=instance).name == restore.new_database
    assert _temporary_clusters(pool) == [] and _held_ports() == [f"pool{pool.pk}"]

    between_1_and_2 = t1 + (t2 - t1) / 2
    operation = finished(run(instance_restore, instance=instance, point_in_time=between_1_and_2))
    assert operation.state == OperationState.SUCCEEDED, operation.error
    second = Restore.objects.get(operation=operation)
    assert _rows(instance, second.new_database) == ["t0", "t1"]
    assert _temporary_clusters(pool) == [] and _held_ports() == [f"pool{pool.pk}"]


def test_a_tampered_base_backup_is_refused_before_anything_is_written(run, managed_cell):
    instance = signup(run, managed_cell)
    pool = instance.database_pool
    _write(instance, "t0")
    base = pool_base_backup(pool=pool)
    time.sleep(1.5)
    manifest = Path(base.location.removeprefix("file://")) / "backup_manifest"
    manifest.write_text(manifest.read_text().replace("PG_VERSION", "PG_VERSIO2", 1))
    driver = drivers.for_pool(pool)
    driver.cluster().archive_now()
    before = driver.list_databases()

    operation = finished(run(instance_restore, instance=instance, point_in_time=timezone.now().replace(microsecond=0)))
    assert operation.state == OperationState.FAILED
    assert "checksum mismatch" in operation.error  # pg_verifybackup: the manifest's own checksum
    assert operation.done_step_names == []
    assert driver.list_databases() == before and _temporary_clusters(pool) == []
    assert not InstanceDatabase.objects.filter(instance=instance).exists()

    # A changed data file (the manifest intact) is caught by pg_verifybackup against the manifest's SHA-256.
    manifest.write_text(manifest.read_text().replace("PG_VERSIO2", "PG_VERSION", 1))
    (Path(base.location.removeprefix("file://")) / "PG_VERSION").write_text("99\n")
    operation = finished(run(instance_restore, instance=instance, point_in_time=timezone.now().replace(microsecond=0)))
    assert operation.state == OperationState.FAILED and "pg_verifybackup" in operation.error
    assert driver.list_databases() == before and _temporary_clusters(pool) == []


def test_a_failed_recovery_removes_its_temporary_cluster(run, managed_cell):
    instance = signup(run, managed_cell)
    pool = instance.database_pool
    _write(instance, "t0")
    pool_base_backup(pool=pool)
    time.sleep(1.2)
    driver = drivers.for_pool(pool)
    target = _write(instance, "t1")
    time.sleep(1.2)
    driver.cluster().archive_now()
    for segment in driver.cluster().archive.glob("0*"):  # a gap in the WAL: recovery cannot reach the time
        segment.unlink()

    operation = finished(run(instance_restore, instance=instance, point_in_time=target))
    assert operation.state == OperationState.FAILED and "recovery" in operation.error
    restore = Restore.objects.get(operation=operation)
    assert not driver.database_exists(instance=instance, database=restore.new_database)
    assert _temporary_clusters(pool) == [] and _held_ports() == [f"pool{pool.pk}"]
    assert not InstanceDatabase.objects.filter(instance=instance).exists()


# ---- SQLite: Litestream ---------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_cell(settings):
    settings.CELLHUB = {**settings.CELLHUB, "LITESTREAM_SYNC_SECONDS": 0.5}
    cell = make_cell(capacity=3)
    Pool.objects.filter(pk=cell["database"].pk).update(config={"litestream": True})
    cell["database"].refresh_from_db()
    return cell


def _sqlite_write(instance, body):
    path = sqlite_file(instance, InstanceDatabase.objects.filter(instance=instance).values_list(
        "name", flat=True).first())
    sqlite_write(path, body)
    return timezone.now()


def test_sqlite_is_replicated_and_restores_to_any_second(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    driver = drivers.for_pool(instance.database_pool)
    assert driver.pool_capabilities().point_in_time_restore
    assert driver.replicator().running(driver.database_name(instance))
    _sqlite_write(instance, "t0")
    time.sleep(2.5)  # the replica's first file (its times are whole seconds) is behind t1
    t1 = _sqlite_write(instance, "t1")
    time.sleep(3)
    t2 = _sqlite_write(instance, "t2")
    time.sleep(3)
    t3 = _sqlite_write(instance, "t3")
    time.sleep(2)

    window = restorable_window(instance=instance)
    assert window.continuous and window.start <= t1 and window.end >= t3.replace(microsecond=0)
    assert window.rpo_seconds <= (timezone.now() - t3).total_seconds() + 1

    operation = finished(run(instance_restore, instance=instance, point_in_time=t2 + (t3 - t2) / 2))
    assert operation.state == OperationState.SUCCEEDED, operation.error
    restore = Restore.objects.get(operation=operation)
    assert restore.backup is None and restore.base_backup is None
    assert sqlite_rows(sqlite_file(instance, restore.new_database)) == ["t0", "t1", "t2"]
    assert InstanceDatabase.objects.get(instance=instance).name == restore.new_database
    assert driver.replicator().running(restore.new_database)  # the new database is replicated too

    operation = finished(run(instance_restore, instance=instance, point_in_time=t1 + (t2 - t1) / 2))
    assert operation.state == OperationState.SUCCEEDED, operation.error
    second = Restore.objects.get(operation=operation)
    assert sqlite_rows(sqlite_file(instance, second.new_database)) == ["t0", "t1"]


def test_a_tampered_sqlite_replica_is_refused_before_anything_is_written(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    driver = drivers.for_pool(instance.database_pool)
    _sqlite_write(instance, "t0")
    time.sleep(1.5)
    target = _sqlite_write(instance, "t1")
    time.sleep(1.5)
    window = restorable_window(instance=instance)
    point = max(window.start, min(window.end, target.replace(microsecond=0)))
    replica = driver.replicator().replica(driver.database_name(instance))
    for replica_file in replica.rglob("*.ltx"):  # whichever files the restore reads, each one was changed
        data, times = bytearray(replica_file.read_bytes()), replica_file.stat()
        data[len(data) // 2] ^= 0xFF
        replica_file.write_bytes(bytes(data))
        os.utime(replica_file, ns=(times.st_atime_ns, times.st_mtime_ns))  # a file replica's times are its mtimes
    before = driver.list_databases()

    # Through the driver (the window, read from the replica's headers, is itself unreliable once files are changed).
    with pytest.raises(drivers.PermanentDriverError, match="checksum mismatch"):
        driver.restore_database(instance=instance, point_in_time=point,
                                new_database=f"{driver.database_name(instance)}_r99", source="?")
    assert driver.list_databases() == before
    assert not list(sqlite_file(instance).parent.glob("*.partial*"))
