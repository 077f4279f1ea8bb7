"""Benchmark: plan and tick a rollout over N instances (default 10,000), the hub's database on PostgreSQL.

Prints the planning time and query count, then per tick the time, the query count and how many upgrades
it started (no worker runs them, so each tick fills the batch anew only as the previous one is marked
done here — as upgrades finishing would). Every instance's window is open at the tick's clock.

    .venv/bin/python bench/rollout.py [--instances 10000] [--reefs 40] [--batch 50] [--ticks 5]

It builds the fleet with bulk_create in its own database, ``$CELLHUB_BENCH_DATABASE``
(default ``cellhub_bench_rollout``),
dropped at the end; nothing else on the server is touched.
"""
import argparse
import tempfile
import time
from datetime import UTC, datetime

import benchdb

BENCH_DB = benchdb.database_name("cellhub_bench_rollout")
SUNDAY_0230 = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)  # the default maintenance window is open


def build_fleet(instances: int, reefs: int):
    from django.contrib.auth import get_user_model

    from cells.choices import InstanceState, PoolKind, PoolStatus, ReefStatus, ReleaseState
    from cells.models import Instance, Pool, Reef, Region, Release

    region = Region.objects.create(slug="bench", name="Bench")
    owner = get_user_model().objects.create_user(username="bench", password="x")
    per_reef = instances // reefs
    reef_rows = Reef.objects.bulk_create(
        [Reef(region=region, slug=f"r{n}", status=ReefStatus.ACTIVE, max_instances=per_reef + 1,
              rollout_ring=0 if n == 0 else 1 + n % 3) for n in range(reefs)]
    )
    pools = Pool.objects.bulk_create(
        [Pool(reef=reef, name=f"{kind}-1", kind=kind, provider=provider, capacity=per_reef + 1,
              status=PoolStatus.AVAILABLE)
         for reef in reef_rows
         for kind, provider in ((PoolKind.DATABASE, "sqlite"), (PoolKind.COMPUTE, "local_compute"))]
    )
    pool_of = {(p.reef_id, p.kind): p for p in pools}
    Instance.objects.bulk_create(
        [Instance(name=f"bench-{r.pk}-{n:04d}", owner=owner, region=region, reef=r,
                  database_pool=pool_of[(r.pk, PoolKind.DATABASE)], compute_pool=pool_of[(r.pk, PoolKind.COMPUTE)],
                  server_version="1.0", state=InstanceState.RUNNING)
         for r in reef_rows for n in range(per_reef)],
        batch_size=5000,
    )
    return Release.objects.create(version="2.0", image="img", state=ReleaseState.AVAILABLE)


def measure(fn):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - started
    return result, elapsed, len(queries.captured_queries)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--reefs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--ticks", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cellhub-bench-") as var_dir:
        benchdb.setup_django(BENCH_DB, var_dir)
        try:
            from cells.choices import OperationState
            from cells.models import Operation, RolloutTarget
            from provisioning.rollouts import rollout_create, rollout_start, rollouts_tick

            release = build_fleet(args.instances, args.reefs)
            rollout, seconds, queries = measure(
                lambda: rollout_create(release=release, batch_size=args.batch, bake_minutes=0)
            )
            targets = RolloutTarget.objects.filter(rollout=rollout).count()
            waves = rollout.waves.count()
            print(f"plan: {targets} targets in {waves} waves: {seconds * 1000:.0f} ms, {queries} queries")
            rollout_start(rollout=rollout)
            before = 0
            for tick in range(1, args.ticks + 1):
                _, seconds, queries = measure(lambda: rollouts_tick(now=SUNDAY_0230))
                started = Operation.objects.filter(kind="upgrade").count()
                per = f"{queries / (started - before):.2f} per upgrade started" if started > before else "none started"
                print(f"tick {tick}: {seconds * 1000:.0f} ms, {queries} queries ({per}; goal ≤ 6), "
                      f"upgrades started so far: {started}")
                before = started
                # Stand in for the workers: every queued upgrade finishes.
                Operation.objects.filter(kind="upgrade", state=OperationState.QUEUED).update(
                    state=OperationState.SUCCEEDED
                )
        finally:
            benchdb.drop_database(BENCH_DB)


if __name__ == "__main__":
    main()
