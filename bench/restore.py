"""Benchmark: point-in-time restore on the local providers — the RPO reached under a steady write load, and the
time to restore a ~100 MB database to a point in time beside the plain copy of the same data in the same run.

- PostgreSQL: a managed pool (a cluster the hub runs, WAL archived every CELLHUB_POSTGRES_ARCHIVE_TIMEOUT s);
  PITR = base backup + WAL recovered in a temporary cluster, the one database dumped and loaded into a new
  database; plain = ``pg_restore`` of a ``pg_dump`` of the same database into a new database.
- SQLite: Litestream replication; PITR = ``litestream restore -timestamp`` + integrity check; plain = a file copy.

RPO: while a writer commits a row every 50 ms, every 0.5 s the newest restorable second the driver reports is
compared with the newest committed write; the report gives the median and the worst.

    .venv/bin/python bench/restore.py [--megabytes 100] [--load-seconds 15]

Environment: CELLHUB_BENCH_DATABASE (the hub's throwaway database, default ``cellhub_bench_restore``),
CELLHUB_BENCH_PREFIX (its resources' prefix, default ``benchpitr``), CELLHUB_POSTGRES_PORTS (default 25000-25999).
It removes only what it made: its database, its var directory under /tmp, the cluster and the Litestream processes
it started.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchdb  # noqa: E402  (bench/ is on the path when a script runs)

BENCH_DB = benchdb.database_name("cellhub_bench_restore")
PREFIX = os.environ.get("CELLHUB_BENCH_PREFIX", "benchpitr")


def setup(var_dir: str) -> None:
    with psycopg.connect(benchdb.ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{BENCH_DB}"')
    os.environ.update(
        DATABASE_URL="postgres://{}@{}:{}/{}".format(
            os.environ.get("PGUSER", "postgres"), os.environ.get("PGHOST", "127.0.0.1"),
            os.environ.get("PGPORT", "5432"), BENCH_DB,
        ),
        DEBUG="1", CELLHUB_VAR_DIR=var_dir, CELLHUB_RESOURCE_PREFIX=PREFIX, DJANGO_SETTINGS_MODULE="portal.settings",
        LOG_LEVEL="WARNING", CELLHUB_POSTGRES_PORTS=os.environ.get("CELLHUB_POSTGRES_PORTS", "25000-25999"),
        CELLHUB_BACKUP_KEY=os.environ.get("CELLHUB_BACKUP_KEY", "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMDAwMDA="),
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def timed(work):
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


class Writer(threading.Thread):
    """Commits one row every 50 ms until stopped; ``newest`` is the commit time of the last one."""

    def __init__(self, write):
        super().__init__(daemon=True)
        self.write, self.newest, self.stopped = write, None, threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.write()
            self.newest = datetime.now(UTC)
            time.sleep(0.05)


def measure_rpo(writer: Writer, latest, seconds: float) -> list[float]:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        newest_write, restorable = writer.newest, latest()
        if newest_write and restorable:
            samples.append(max(0.0, (newest_write - restorable).total_seconds()))
    return samples


def report(name: str, rpo: list[float], pitr: float, plain: float, plain_name: str, size: int) -> None:
    print(f"{name}: database {size / 1e6:.0f} MB")
    print(f"  RPO under load: median {statistics.median(rpo):.1f} s, worst {max(rpo):.1f} s "
          f"({len(rpo)} samples; aim < 5 s)")
    print(f"  restore to a point in time {pitr:.1f} s; {plain_name} {plain:.1f} s; ratio {pitr / plain:.2f} "
          f"(aim <= 2)")


def bench_postgres(megabytes: int, load_seconds: float) -> None:
    import subprocess

    from cells.choices import PoolKind, Provider
    from cells.models import Pool
    from provisioning import drivers
    from provisioning.backups.base import pool_base_backup
    from tests.factories import make_instance, make_pool, make_reef

    reef = make_reef()
    pool = make_pool(reef, PoolKind.DATABASE, provider=Provider.POSTGRES, config={"managed": True})
    driver = drivers.for_pool(pool)
    try:
        result = driver.provision_pool()
        Pool.objects.filter(pk=pool.pk).update(config={**pool.config, **result["config"]})
        pool.refresh_from_db()
        driver = drivers.for_pool(pool)
        instance = make_instance(reef=reef, database_pool=pool)
        credentials = driver.create_database(instance=instance)
        connect = dict(host=credentials.host, port=credentials.port, user=credentials.login,
                       password=credentials.password, dbname=credentials.database, autocommit=True)
        with psycopg.connect(**connect) as connection:
            connection.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp(),"
                               " body text)")
            rows = megabytes * 1_000_000 // 300
            connection.execute("INSERT INTO notes (body) SELECT repeat(md5(g::text), 7) FROM generate_series(1, %s) g",
                               [rows])
        pool_base_backup(pool=pool)
        with psycopg.connect(**connect) as connection:
            size = connection.execute("SELECT pg_database_size(current_database())").fetchone()[0]

        writer_connection = psycopg.connect(**connect)
        writer = Writer(lambda: writer_connection.execute("INSERT INTO notes (body) VALUES ('load')"))
        writer.start()
        rpo = measure_rpo(writer, lambda: driver.point_in_time_window(instance=instance)[1], load_seconds)
        target = writer.newest
        time.sleep(1)
        writer.stopped.set()
        writer.join()
        writer_connection.close()
        base = pool.base_backups.get().location
        pitr, _ = timed(lambda: driver.restore_point_in_time(
            instance=instance, point_in_time=target, new_database=f"{credentials.database}_pitr", base=base))
        with psycopg.connect(**{**connect, "dbname": f"{credentials.database}_pitr"}) as connection:
            restored = connection.execute("SELECT count(*), max(at) FROM notes").fetchone()
        with psycopg.connect(**connect) as connection:
            expected = connection.execute("SELECT count(*) FROM notes WHERE at <= %s", [target]).fetchone()[0]
        assert restored[0] == expected, (restored, expected)

        dump = Path(os.environ["CELLHUB_VAR_DIR"]) / "plain.dump"
        environment = {**os.environ, "PGPASSWORD": credentials.password}
        subprocess.run([driver.binary("pg_dump"), "-Fc", "-h", "127.0.0.1", "-p", str(credentials.port), "-U",
                        credentials.login, "-f", str(dump), credentials.database], check=True, env=environment)
        with driver.cluster().connect(autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{credentials.database}_plain" OWNER "{credentials.login}"')
        plain, _ = timed(lambda: subprocess.run(
            [driver.binary("pg_restore"), "--no-owner", "--single-transaction", "-h", "127.0.0.1", "-p",
             str(credentials.port), "-U", credentials.login, "-d", f"{credentials.database}_plain", str(dump)],
            check=True, env=environment))
        report("PostgreSQL (managed pool)", rpo, pitr, plain, "plain pg_restore", size)
    finally:
        drivers.for_pool(pool).delete_pool()


def bench_sqlite(megabytes: int, load_seconds: float) -> None:
    import sqlite3

    from cells.choices import PoolKind, Provider
    from provisioning import drivers
    from tests.factories import make_instance, make_pool, make_reef

    reef = make_reef()
    pool = make_pool(reef, PoolKind.DATABASE, provider=Provider.SQLITE, config={"litestream": True})
    driver = drivers.for_pool(pool)
    try:
        instance = make_instance(reef=reef, database_pool=pool)
        path = Path(driver.create_database(instance=instance).url.removeprefix("sqlite:///"))
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, at TEXT, body TEXT)")
            rows = megabytes * 1_000_000 // 250
            connection.executemany("INSERT INTO notes (at, body) VALUES ('', ?)",
                                   ((f"{n:08d}" * 28,) for n in range(rows)))
        connection.close()
        database = driver.database_name(instance)
        time.sleep(3)
        size = path.stat().st_size

        writer_connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)

        def write():
            writer_connection.execute("INSERT INTO notes (at, body) VALUES (?, 'load')",
                                      (datetime.now(UTC).isoformat(),))

        writer = Writer(write)
        writer.start()
        rpo = measure_rpo(writer, lambda: driver.replicator().window(database)[1], load_seconds)
        target = writer.newest
        time.sleep(2)
        writer.stopped.set()
        writer.join()
        writer_connection.close()
        pitr, _ = timed(lambda: driver.restore_database(
            instance=instance, point_in_time=target, new_database=f"{database}_pitr", source="?"))
        copy_target = path.with_name("plain-copy.sqlite3")
        plain, _ = timed(lambda: shutil.copyfile(path, copy_target))
        copy_target.unlink()
        report("SQLite (Litestream)", rpo, pitr, plain, "plain file copy", size)
    finally:
        driver.replicator().stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--load-seconds", type=float, default=15)
    arguments = parser.parse_args()
    var_dir = tempfile.mkdtemp(prefix="cellhub-bench-restore-", dir="/tmp")
    os.chmod(var_dir, 0o711)
    setup(var_dir)
    try:
        bench_postgres(arguments.megabytes, arguments.load_seconds)
        bench_sqlite(arguments.megabytes, arguments.load_seconds)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(benchdb.ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
