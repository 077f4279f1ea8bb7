"""Benchmark: instances reaching running per second against the number of workers, through the real task path.

    .venv/bin/python bench/workers.py [--count 30] [--workers 1,2,4]

For each worker count it starts a real ``manage.py qcluster`` with that many workers (Redis as the broker when
``REDIS_URL`` is set — as in production — else the ORM broker), signs up ``--count`` instances at once through
``instance_signup`` (placement in this process, the provision queued for the workers, exactly as the site does),
and times from the first signup to the last instance running. Every instance is real on the local drivers: an
SQLite database, a folder share, and a reference-server process run by its own ``supervisord`` that must answer on
its port before the provision counts it running. The instances of one worker count are stopped (their processes
and programs removed) before the next count runs, so each count starts from the same machine.

First it counts what one provision costs as a worker runs it: its statements on every connection, and the
connections it opens (the steps run under a time limit in a thread of their own). Printed beside each rate: the
same number of instances provisioned one after another in this process (the task body called inline: no broker,
no worker) — the floor a single worker could reach — and the speed-up over one worker. On a machine with N cores
the rate should rise with workers up to N and flatten after.

The database is ``$CELLHUB_BENCH_DATABASE`` (default ``cellhub_bench_workers``), dropped at the end; instance ports
come from ``$CELLHUB_BENCH_PORTS`` (default ``23000-23999``); everything else lives in a temporary folder, removed
with its supervisor at the end.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchdb  # noqa: E402  (bench/ is on the path when a script runs)

BENCH_DB = benchdb.database_name("cellhub_bench_workers")
PORTS = os.environ.get("CELLHUB_BENCH_PORTS", "23000-23999")


def build_topology(capacity: int):
    from django.contrib.auth import get_user_model

    from cells.choices import PoolKind, PoolStatus, ReefStatus
    from cells.models import Pool, Reef, Region
    from cells.services import pool_ensure_shares

    region = Region.objects.create(slug="bench", name="Bench")
    reef = Reef.objects.create(region=region, slug="r1", status=ReefStatus.ACTIVE, max_instances=capacity)
    for name, kind, provider in [("db", PoolKind.DATABASE, "sqlite"), ("files", PoolKind.STORAGE, "local_fs"),
                                 ("compute", PoolKind.COMPUTE, "local_compute")]:
        pool = Pool.objects.create(reef=reef, name=name, kind=kind, provider=provider, capacity=capacity,
                                   status=PoolStatus.AVAILABLE)
        if kind == PoolKind.STORAGE:
            pool_ensure_shares(pool=pool)
    owner = get_user_model().objects.create_user(username="bench", email="bench@example.com", password="x")
    return region, owner


def wait_running(names: list[str], timeout: float) -> None:
    from cells.models import Instance, Operation

    deadline = time.monotonic() + timeout
    while Instance.objects.filter(name__in=names, state="running").count() < len(names):
        failed = Operation.objects.filter(instance__name__in=names, state="failed").values_list("error", flat=True)
        if failed:
            raise SystemExit(f"a provision failed: {failed[0]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"not all {len(names)} instances were running within {timeout:.0f} s")
        time.sleep(0.05)


def sign_up(region, owner, names: list[str]) -> None:
    from provisioning.lifecycle import instance_signup

    for name in names:
        instance_signup(name=name, region=region, owner=owner)  # autocommit: queued at once


def remove_instances(names: list[str]) -> None:
    """Stop the processes of ``names`` and forget their programs (the bench's own supervisor)."""
    from cells.models import Instance
    from provisioning import drivers

    for instance in Instance.objects.filter(name__in=names).select_related("compute_pool"):
        drivers.for_pool(instance.compute_pool).delete(instance=instance)


def with_workers(workers: int, region, owner, count: int, env: dict) -> float:
    """Seconds from the first signup to the last of ``count`` instances running, with ``workers`` workers."""
    names = [f"w{workers}-{n:03d}" for n in range(count)]
    try:
        with benchdb.qcluster(env, workers=workers, settle_seconds=4):
            started = time.perf_counter()
            sign_up(region, owner, names)
            wait_running(names, timeout=60 + 10 * count)
            return time.perf_counter() - started
    finally:
        remove_instances(names)


class _Counted:
    """Every statement sent on any connection of this process while installed, and every connection opened."""

    def __init__(self):
        self.statements, self.connections = 0, 0

    def __call__(self, execute, sql, params, many, context):
        self.statements += 1
        return execute(sql, params, many, context)

    def opened(self, sender, connection, **kwargs):
        self.connections += 1
        connection.execute_wrappers.append(self)


def provision_cost(region, owner) -> tuple[int, int]:
    """(statements, new connections) of one provision run by ``operation_run`` as a worker runs it, on every
    connection the run uses; the instance is removed afterwards."""
    from django.db import connection
    from django.db.backends.signals import connection_created

    from provisioning.lifecycle import instance_signup
    from provisioning.operations import operation_run

    operation = instance_signup(name="counted", region=region, owner=owner)  # queued: no worker runs here
    connection.ensure_connection()
    counted = _Counted()
    connection_created.connect(counted.opened)
    connection.execute_wrappers.append(counted)
    try:
        state = operation_run(operation.pk)
    finally:
        connection.execute_wrappers.remove(counted)
        connection_created.disconnect(counted.opened)
        remove_instances(["counted"])
    if state != "succeeded":
        raise SystemExit(f"the counted provision ended {state}")
    return counted.statements, counted.connections


def inline(region, owner, count: int) -> float:
    """The same provisions one after another in this process, the task body called inline."""
    from django_q.conf import Conf

    names = [f"inline-{n:03d}" for n in range(count)]
    Conf.SYNC = True
    try:
        started = time.perf_counter()
        sign_up(region, owner, names)
        wait_running(names, timeout=60 + 10 * count)
        return time.perf_counter() - started
    finally:
        Conf.SYNC = False
        remove_instances(names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    os.environ["CELLHUB_LOCAL_PORTS"] = PORTS
    with tempfile.TemporaryDirectory(prefix="cellhub-bench-") as var_dir:
        benchdb.setup_django(BENCH_DB, var_dir)
        from provisioning.drivers.local_supervisor import Supervisor
        from provisioning.plans.registry import plan_for

        supervisor = Supervisor.default()
        try:
            supervisor.ensure_running()
            region, owner = build_topology(args.count * (len(counts) + 1) + 1)
            env = {**os.environ, "LOG_LEVEL": "WARNING"}
            statements, connections = provision_cost(region, owner)
            steps = len(plan_for("provision").step_names)
            floor = inline(region, owner, args.count)
            seconds = {workers: with_workers(workers, region, owner, args.count, env) for workers in counts}
        finally:
            supervisor.shutdown()
            benchdb.drop_database(BENCH_DB)
    broker = "Redis" if os.environ.get("REDIS_URL") else "the ORM broker"
    print(f"\n{args.count} signups → running on the local drivers, {os.cpu_count()} cores, {broker}:")
    print(f"  one provision: {statements} statements (goal ≤ 25), {connections} new connection(s) for its {steps} "
          "steps (goal: none per step)")
    print(f"  inline (no broker, one after another) {args.count / floor:6.1f}/s")
    one = seconds[counts[0]]
    for workers, spent in seconds.items():
        print(f"  {workers} worker(s)  {args.count / spent:6.1f}/s   {one / spent:4.2f}× the first")


if __name__ == "__main__":
    main()
