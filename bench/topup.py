"""Benchmark: the capacity planner over a fleet of N reefs × 3 pool kinds, the hub's database on PostgreSQL.

Prints the time and the query count of planning (facts read from the fleet + the pure planner) for the whole
fleet and for a tenth of it — the query count must not grow with the fleet — and then of a full top-up pass
that orders the pools the fleet lacks (each order locks its reef and plans it again, so that part grows with
the number of reefs needing pools, not with the fleet).

    .venv/bin/python bench/topup.py [--reefs 1000]

It builds the fleet with bulk_create in its own database, ``$CELLHUB_BENCH_DATABASE``
(default ``cellhub_bench_topup``),
dropped at the end; nothing else on the server is touched.
"""
import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchdb  # noqa: E402  (bench/ is on the path when a script runs)

ADMIN = benchdb.ADMIN
BENCH_DB = benchdb.database_name("cellhub_bench_topup")
SHARES_PER_POOL = 10
INSTANCES_PER_REEF = 4
REGIONS = 10


def setup_django(var_dir):
    benchdb.setup_django(BENCH_DB, var_dir)


def build_fleet(reef_count: int) -> None:
    """``reef_count`` active reefs in ten regions, each with a database, a storage (10 shares) and a compute pool,
    four instances and their shares; one reef in ten is low on storage, and half of those are draining (no
    order: a shortfall)."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from cells.choices import InstanceState, PoolKind, PoolStatus, ReefStatus, ShareStatus
    from cells.models import Instance, Pool, Reef, Region, Share

    regions = Region.objects.bulk_create(
        [Region(slug=f"region-{n}", name=f"Region {n}") for n in range(REGIONS)]
    )
    reefs = Reef.objects.bulk_create([
        Reef(region=regions[n % REGIONS], slug=f"reef-{n}", max_instances=200,
             status=ReefStatus.DRAINING if n % 20 == 13 else ReefStatus.ACTIVE)
        for n in range(reef_count)
    ])
    kinds = [(PoolKind.DATABASE, "sqlite", 50), (PoolKind.STORAGE, "local_fs", SHARES_PER_POOL),
             (PoolKind.COMPUTE, "local_compute", 50)]
    pools = Pool.objects.bulk_create([
        Pool(reef=reef, name=f"{kind}-1", kind=kind, provider=provider, capacity=capacity,
             status=PoolStatus.AVAILABLE)
        for reef in reefs for kind, provider, capacity in kinds
    ])
    by_reef = {}
    for pool in pools:
        by_reef.setdefault(pool.reef_id, {})[pool.kind] = pool
    owner = get_user_model().objects.create_user(username="bench", email="bench@example.com", password="x")
    now = timezone.now()
    instances = Instance.objects.bulk_create([
        Instance(name=f"i-{reef.pk}-{n}", owner=owner, region_id=reef.region_id, reef=reef,
                 database_pool=by_reef[reef.pk][PoolKind.DATABASE], compute_pool=by_reef[reef.pk][PoolKind.COMPUTE],
                 server_version="x", state=InstanceState.RUNNING)
        for reef in reefs for n in range(INSTANCES_PER_REEF)
    ], batch_size=5000)
    # Signups spread over the last four days, so the window sees some.
    for index, instance in enumerate(instances):
        instance.created_at = now - timedelta(hours=index % 96)
    Instance.objects.bulk_update(instances, ["created_at"], batch_size=5000)
    held = {}
    for instance in instances:
        held.setdefault(instance.reef_id, []).append(instance)
    shares = []
    for index, reef in enumerate(reefs):
        storage = by_reef[reef.pk][PoolKind.STORAGE]
        # One reef in ten has given away most of its shares (the others keep six free, above the floor of 5).
        taken = SHARES_PER_POOL - 1 if index % 10 == 3 else INSTANCES_PER_REEF
        owners = held[reef.pk] + [None] * SHARES_PER_POOL
        for slot in range(SHARES_PER_POOL):
            holder = owners[slot] if slot < min(taken, INSTANCES_PER_REEF) else None
            status = ShareStatus.ASSIGNED if holder else (
                ShareStatus.RETIRED if slot < taken else ShareStatus.AVAILABLE)
            shares.append(Share(pool=storage, slot=slot, name=f"{reef.slug}-s{slot:02d}", status=status,
                                instance=holder))
    Share.objects.bulk_create(shares, batch_size=5000)


def measure(label: str, work):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    connection.queries_log.clear()  # the log keeps 9,000 queries at most: start each measure empty
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        result = work()
        elapsed = time.perf_counter() - started
    print(f"{label}: {elapsed * 1000:.0f} ms, {len(queries.captured_queries)} queries")
    return result, elapsed, len(queries.captured_queries)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reefs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cellhub-bench-topup-") as var_dir:
        setup_django(var_dir)
        try:
            from django_q.conf import Conf

            from cells.models import Reef
            from provisioning.capacity import capacity_top_up_pass, gather_facts, plan_top_ups

            Conf.SYNC = False  # the pass enqueues its top-ups; no worker runs them here
            t0 = time.perf_counter()
            build_fleet(args.reefs)
            print(f"fleet: {args.reefs} reefs × 3 kinds built in {time.perf_counter() - t0:.1f} s")
            measure("warm-up", lambda: plan_top_ups(gather_facts()))
            tenth = list(Reef.objects.order_by("pk").values_list("pk", flat=True)[: max(args.reefs // 10, 1)])
            _, _, small_queries = measure(
                f"plan {len(tenth)} reefs × 3 kinds", lambda: plan_top_ups(gather_facts(reef_ids=tenth))
            )
            plan, elapsed, queries = measure(
                f"plan {args.reefs} reefs × 3 kinds", lambda: plan_top_ups(gather_facts())
            )
            print(f"  → {len(plan.assessments)} assessments, {len(plan.orders)} pools to order, "
                  f"{len(plan.shortfalls)} shortfalls")
            started, _, _ = measure("top-up pass (orders included)", capacity_top_up_pass)
            again, _, _ = measure("second pass (nothing left to order)", capacity_top_up_pass)
            print(f"  → first pass started {len(started)} top-ups, the second {len(again)}")
            verdict = "yes" if elapsed < 1 and queries == small_queries else "NO"
            print(f"planning {args.reefs} reefs: {elapsed:.3f} s, {queries} queries "
                  f"(aim: under 1 s and constant: {verdict})")
        finally:
            from django.db import connections

            connections.close_all()
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')


if __name__ == "__main__":
    main()
