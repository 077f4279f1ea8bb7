"""Benchmark: N signups through the task path on the local drivers, the hub's database on PostgreSQL.

Prints signups/s, p50/p95 signup→running latency, the hub's own overhead per instance (latency minus
the time spent inside driver steps), and the allocation step against a bare SQL
``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1)`` loop measured in the same run.

    .venv/bin/python bench/signup.py --count 200 [--database-provider postgres|sqlite]

It creates (and drops) its own databases: ``$CELLHUB_BENCH_DATABASE`` (default ``cellhub_bench``) and the
instances' ones, named with ``$CELLHUB_BENCH_PREFIX`` (default ``bench``); it drops nothing else.
"""
import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchdb  # noqa: E402  (bench/ is on the path when a script runs)

ADMIN = benchdb.ADMIN
BENCH_DB = benchdb.database_name("cellhub_bench")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def setup_django(var_dir):
    benchdb.setup_django(BENCH_DB, var_dir)


def build_topology(count, provider):
    from cells.choices import PoolKind, PoolStatus, ReefStatus
    from cells.models import Pool, Reef, Region
    from cells.services import pool_ensure_shares

    region = Region.objects.create(slug="bench", name="Bench")
    reef = Reef.objects.create(region=region, slug="r1", status=ReefStatus.ACTIVE, max_instances=count * 2)
    config = {"host": "127.0.0.1", "port": 5432} if provider == "postgres" else {}
    for name, kind, prov in [("db", PoolKind.DATABASE, provider), ("files", PoolKind.STORAGE, "local_fs"),
                             ("compute", PoolKind.COMPUTE, "local_compute")]:
        pool = Pool.objects.create(reef=reef, name=name, kind=kind, provider=prov, capacity=count * 2,
                                   status=PoolStatus.AVAILABLE, config=config if kind == PoolKind.DATABASE else {})
        if kind == PoolKind.STORAGE:
            pool_ensure_shares(pool=pool)
    return region


def run_signups(count, region):
    from django.contrib.auth import get_user_model
    from django_q.conf import Conf

    from cells.models import Instance
    from provisioning.lifecycle import instance_signup

    Conf.SYNC = True  # the task body runs inline: the worker's code path without broker latency
    owner = get_user_model().objects.create_user(username="bench", email="bench@example.com", password="x")
    latencies, overheads = [], []
    started = time.perf_counter()
    for n in range(count):
        t0 = time.perf_counter()
        operation = instance_signup(name=f"bench-{n:05d}", region=region, owner=owner)
        elapsed = time.perf_counter() - t0
        operation.refresh_from_db()
        assert operation.instance.state == "running", operation.error
        driver_seconds = sum(
            (datetime.fromisoformat(s["finished_at"]) - datetime.fromisoformat(s["started_at"])).total_seconds()
            for s in operation.steps if s["name"] != "place"
        )
        latencies.append(elapsed)
        overheads.append(elapsed - driver_seconds)
    total = time.perf_counter() - started
    assert Instance.objects.filter(state="running").count() == count
    return total, latencies, overheads


def time_hub_allocation(count, region):
    """instance_place alone (capacity check, reef lock, pool choice, SKIP LOCKED share), one transaction each."""
    from django.contrib.auth import get_user_model

    from cells.models import Instance
    from cells.placement import instance_place

    owner = get_user_model().objects.get(username="bench")
    instances = Instance.objects.bulk_create(
        [Instance(name=f"alloc-{n:05d}", owner=owner, region=region, server_version="x") for n in range(count)]
    )
    t0 = time.perf_counter()
    for instance in instances:
        instance_place(instance=instance)
    return (time.perf_counter() - t0) / count


def time_bare_skip_locked(count):
    with psycopg.connect(ADMIN.replace("dbname=postgres", f"dbname={BENCH_DB}"), autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_slots (id serial PRIMARY KEY, taken_by int)")
        conn.execute("INSERT INTO bench_slots (taken_by) SELECT NULL FROM generate_series(1, %s)", [count])
        t0 = time.perf_counter()
        for n in range(count):
            with conn.transaction():
                conn.execute(
                    "UPDATE bench_slots SET taken_by = %s WHERE id = (SELECT id FROM bench_slots "
                    "WHERE taken_by IS NULL ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)",
                    [n],
                )
        return (time.perf_counter() - t0) / count


def cleanup(made: list[tuple[str, str]]):
    """Drop the instance databases and logins this run made (``made``), then the bench database; nothing else."""
    from django.db import connections

    connections.close_all()
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        for database, login in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{login}"')
    benchdb.drop_database(BENCH_DB)


def made_resources() -> list[tuple[str, str]]:
    """(database, login) of each of this run's instances on a PostgreSQL pool: derived from the instance's id and
    the bench prefix, as the driver names them."""
    from cells.models import Instance
    from provisioning import drivers

    made = []
    for instance in Instance.objects.select_related("database_pool").filter(database_pool__provider="postgres"):
        driver = drivers.for_pool(instance.database_pool)
        made.append((driver.database_name(instance), driver.login_name(instance)))
    return made


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--database-provider", choices=["postgres", "sqlite"], default="postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cellhub-bench-") as var_dir:
        setup_django(var_dir)
        made = []
        try:
            region = build_topology(args.count, args.database_provider)
            total, latencies, overheads = run_signups(args.count, region)
            hub_alloc = time_hub_allocation(args.count, region)
            bare_alloc = time_bare_skip_locked(args.count)
        finally:
            made = made_resources()
            cleanup(made)
    print(f"signups: {args.count} (database driver: {args.database_provider}, storage local_fs, compute local_compute)")
    print(f"throughput: {args.count / total:.1f} signups/s")
    print(f"signup→running latency: p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"p95 {percentile(latencies, 0.95) * 1000:.1f} ms")
    print(f"hub overhead (latency minus driver steps): p50 {statistics.median(overheads) * 1000:.1f} ms, "
          f"p95 {percentile(overheads, 0.95) * 1000:.1f} ms (aim: < 1000 ms p95)")
    print(f"allocation: hub instance_place {hub_alloc * 1000:.2f} ms, bare SKIP LOCKED update "
          f"{bare_alloc * 1000:.2f} ms, ratio {hub_alloc / bare_alloc:.1f}x (aim: <= 3x)")


if __name__ == "__main__":
    main()
