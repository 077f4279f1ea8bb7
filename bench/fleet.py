"""Benchmark: the hub's costs against fleet size, each beside the bare SQL for the same work in the same run.

    .venv/bin/python bench/fleet.py --sizes 1000,10000,100000

For each size it builds a fleet in seconds (INSERT … SELECT generate_series, triggers off, then the slot counters
and tallies refilled from the rows): ``size`` running instances in ``size / 100`` reefs of one region, each reef and
pool 80% full, one succeeded provision operation per instance. Then it measures (medians):

- placement: ``instance_place`` in its own transaction, against the bare allocation
  ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING`` on a table of the same size, taken in
  turns (one of each per round, so both see the same load);
- ``/metrics`` (the whole scrape) against set-based SQL computing the same numbers from the rows;
- the capacity page (the admin view, rendered) against set-based SQL for its numbers;
- the planner's facts (``gather_facts``) against set-based SQL for the same numbers from the rows;
- the admin instance list (first page) against its minimal SQL (the page's rows, the estimate, the filters' small
  tables): both the SQL the page ran (timed at the cursor: the database's share, what grows with the fleet) and the
  whole rendered page (Django admin's templates add a constant ~10-20 ms for 100 rows at any fleet size);
- rollout planning over the whole fleet (``rollout_create``, with its statement count) against the same plan in bare
  SQL (rollout, waves and targets each one ``INSERT``, committed);
and, once on the largest fleet, placement by 8 concurrent clients over 8 reefs against 1 client (and the same for
the bare allocation), with the CPU one placement costs (client process and PostgreSQL backend, read from /proc when
the server runs on this machine) and the most that many cores allow: CPU, not locking, bounds the gain of more clients
on a small machine. Each ratio is printed beside its baseline; goals in brackets.

The database is ``$CELLHUB_BENCH_DATABASE`` (default ``cellhub_bench_fleet``), dropped at the end; resources are
named with ``$CELLHUB_BENCH_PREFIX``. Nothing else on the server is touched.
"""
import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchdb  # noqa: E402  (bench/ is on the path when a script runs)

BENCH_DB = benchdb.database_name("cellhub_bench_fleet")
PER_REEF = 100
HEADROOM = 25  # each reef and pool holds 100 of 125: 80% full
PLACEMENTS = 200
CLIENTS = 8
PER_CLIENT = 150


def _dsn():
    return benchdb.ADMIN.replace("dbname=postgres", f"dbname={BENCH_DB}")


def build_fleet(size: int) -> None:
    """``size`` running instances in ``size / PER_REEF`` reefs of region ``bench``; replaces any previous fleet."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from cells.counters import counters_refill
    from cells.tally import tally_refill

    reefs = max(size // PER_REEF, 1)
    capacity = PER_REEF + HEADROOM
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE cells_region, cells_reef, cells_pool, cells_share, cells_instance, cells_operation, "
                       "cells_capacityshortfall, cells_tally CASCADE")
        cursor.execute("DROP TABLE IF EXISTS bench_slots")
    owner, _ = get_user_model().objects.get_or_create(username="bench")
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")  # no triggers: the counters are refilled below
        cursor.execute("INSERT INTO cells_region (slug, name, cloud, location, status, maintenance_weekday, "
                       "maintenance_hour) VALUES ('bench', 'Bench', 'local', '', 'active', 6, 2), "
                       "('conc', 'Concurrency', 'local', '', 'active', 6, 2)")
        cursor.execute(
            "INSERT INTO cells_reef (region_id, slug, status, max_instances, rollout_ring, ingress_address, "
            "capacity_overrides, status_reason, created_at, placed_instances) "
            "SELECT g.id, 'r' || n, 'active', %s, n %% 3, '127.0.0.1', '{}'::jsonb, '', now(), 0 "
            "FROM cells_region g, generate_series(1, %s) n WHERE g.slug = 'bench' "
            "UNION ALL SELECT g.id, 'c' || n, 'active', 100000, 1, '127.0.0.1', '{}'::jsonb, '', now(), 0 "
            "FROM cells_region g, generate_series(1, %s) n WHERE g.slug = 'conc'",
            [capacity, reefs, CLIENTS],
        )
        cursor.execute(
            "INSERT INTO cells_pool (reef_id, name, kind, provider, external_id, capacity, status, dedicated, config, "
            "status_reason, created_at, slots_held, shares_available) "
            "SELECT r.id, k.kind || '-1', k.kind, k.provider, '', "
            "CASE WHEN r.slug LIKE 'c%%' THEN 2000 ELSE %s END, 'available', false, '{}'::jsonb, '', now(), 0, 0 "
            "FROM cells_reef r, (VALUES ('database', 'sqlite'), ('storage', 'local_fs'), "
            "('compute', 'local_compute')) k(kind, provider)",
            [capacity],
        )
        cursor.execute(
            "INSERT INTO cells_share (pool_id, slot, name, endpoint, status, instance_id, firewall_address) "
            "SELECT p.id, s, 'bench-p' || p.id || '-' || s, '', 'available', NULL, '' "
            "FROM cells_pool p, generate_series(0, p.capacity - 1) s WHERE p.kind = 'storage'"
        )
        cursor.execute(
            "INSERT INTO cells_instance (name, owner_id, region_id, reef_id, database_pool_id, compute_pool_id, "
            "server_version, state, tier, cpu_millicores, memory_mib, hostname, version_pinned, created_at, "
            "updated_at) "
            "SELECT 'f' || r.id || '-' || n, %s, r.region_id, r.id, d.id, c.id, '1.0', 'running', 'shared', 500, "
            "1024, 'f' || r.id || '-' || n || '.cells.localhost', false, now() - n * interval '1 hour', now() "
            "FROM cells_reef r JOIN cells_pool d ON d.reef_id = r.id AND d.kind = 'database' "
            "JOIN cells_pool c ON c.reef_id = r.id AND c.kind = 'compute', generate_series(1, %s) n "
            "WHERE r.slug LIKE 'r%%'",
            [owner.pk, PER_REEF],
        )
        cursor.execute(
            "UPDATE cells_share s SET status = 'assigned', instance_id = i.id FROM ("
            "SELECT i.id, p.id AS pool_id, row_number() OVER (PARTITION BY i.reef_id ORDER BY i.id) - 1 AS slot "
            "FROM cells_instance i JOIN cells_pool p ON p.reef_id = i.reef_id AND p.kind = 'storage') i "
            "WHERE s.pool_id = i.pool_id AND s.slot = i.slot"
        )
        cursor.execute(
            "INSERT INTO cells_operation (kind, state, instance_id, params, task_id, attempts, steps, error, "
            "cleanup_state, cleanup_error, created_at, started_at, finished_at, updated_at) "
            "SELECT 'provision', 'succeeded', i.id, '{}'::jsonb, '', 1, '[]'::jsonb, '', 'none', '', i.created_at, "
            "i.created_at, "
            "i.created_at + interval '40 seconds', i.created_at FROM cells_instance i"
        )
        cursor.execute("SET session_replication_role = DEFAULT")
        counters_refill()
        tally_refill()
        cursor.execute("CREATE TABLE bench_slots (id serial PRIMARY KEY, taken_by int)")
        cursor.execute("INSERT INTO bench_slots (taken_by) SELECT n FROM generate_series(1, %s) n", [size])
        cursor.execute("INSERT INTO bench_slots (taken_by) SELECT NULL FROM generate_series(1, %s)",
                       [max(PLACEMENTS, CLIENTS * PER_CLIENT) * 2])
        cursor.execute("CREATE INDEX bench_slots_free ON bench_slots (id) WHERE taken_by IS NULL")
        cursor.execute("ANALYZE")


def median_ms(work, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


# ---- placement ----------------------------------------------------------------------------------------------

def _new_instances(count: int, region_slug: str):
    from django.contrib.auth import get_user_model

    from cells.models import Instance, Region

    region = Region.objects.get(slug=region_slug)
    owner = get_user_model().objects.get(username="bench")
    start = Instance.objects.count()
    made = Instance.objects.bulk_create([
        Instance(name=f"new-{start + n}", owner=owner, region=region, server_version="1.0") for n in range(count)
    ])
    for instance in made:
        instance.region = region
    return made


def placement_pair() -> tuple[float, float]:
    """Median ms of ``instance_place`` (in its own transaction) and of the bare allocation, taken in turns (one of
    each per round) so both see the same load on a shared machine."""
    import psycopg
    from django.db import transaction

    from cells.placement import instance_place

    instances = iter(_new_instances(PLACEMENTS, "bench"))
    counter = iter(range(10**9))
    hub, bare = [], []
    with psycopg.connect(_dsn()) as conn:
        for _ in range(PLACEMENTS):
            started = time.perf_counter()
            with transaction.atomic():
                instance_place(instance=next(instances))
            hub.append(time.perf_counter() - started)
            started = time.perf_counter()
            with conn.transaction():
                conn.execute(
                    "UPDATE bench_slots SET taken_by = %s WHERE id = (SELECT id FROM bench_slots "
                    "WHERE taken_by IS NULL ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id",
                    [-next(counter)],
                ).fetchone()
            bare.append(time.perf_counter() - started)
    return statistics.median(hub) * 1000, statistics.median(bare) * 1000


def _backend_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) the PostgreSQL backend ``pid`` has used, or None when the server is not on this
    machine (its /proc entry is not readable)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed_loop(backend_pid: int, barrier, loop) -> tuple[float, float, float | None]:
    """(wall seconds, this process's CPU seconds, the backend's CPU seconds or None) of ``loop()``, started when every
    client is ready."""
    barrier.wait()
    server = _backend_cpu_seconds(backend_pid)
    client, started = time.process_time(), time.perf_counter()
    loop()
    wall, client = time.perf_counter() - started, time.process_time() - client
    after = _backend_cpu_seconds(backend_pid)
    return wall, client, (after - server) if server is not None and after is not None else None


def _hub_client(args):
    ids, barrier = args
    from django.db import connection, connections, transaction

    from cells.models import Instance
    from cells.placement import instance_place

    connections.close_all()
    instances = list(Instance.objects.select_related("region").filter(pk__in=ids))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()

    def loop():
        for instance in instances:
            with transaction.atomic():
                instance_place(instance=instance)

    return _timed_loop(pid, barrier, loop)


def _bare_client(args):
    count, barrier = args
    import psycopg

    with psycopg.connect(_dsn(), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.autocommit = False

        def loop():
            for _ in range(count):
                with conn.transaction():
                    conn.execute(
                        "UPDATE bench_slots SET taken_by = 0 WHERE id = (SELECT id FROM bench_slots "
                        "WHERE taken_by IS NULL ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id"
                    ).fetchone()

        return _timed_loop(pid, barrier, loop)


def _rate(client, jobs) -> tuple[float, float | None]:
    """(placements per second of ``len(jobs)`` processes running at once — wall time of the slowest —, CPU
    milliseconds per placement, client and server together, or None when the server's CPU cannot be read)."""
    from django.db import connections

    connections.close_all()
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        barrier = manager.Barrier(len(jobs))
        with context.Pool(len(jobs)) as pool:
            results = pool.map(client, [(job, barrier) for job in jobs])
    done = sum(len(job) if isinstance(job, list) else job for job in jobs)
    walls, clients, servers = zip(*results, strict=True)
    cpu = None if None in servers else (sum(clients) + sum(servers)) * 1000 / done
    return done / max(walls), cpu


def concurrency_rates() -> dict:
    """Placements per second of 1 client and of CLIENTS clients over CLIENTS reefs, hub and bare, each with the CPU
    one placement costs (client and server): on a machine with few cores the CPU, not the database's locks, bounds
    what more clients can add, and ``ceiling`` is that bound — cores ÷ CPU per placement, over the 1-client rate."""
    ids = [instance.pk for instance in _new_instances(CLIENTS * PER_CLIENT + PER_CLIENT, "conc")]
    rates = {}
    rates["single"], rates["cpu"] = _rate(_hub_client, [ids[:PER_CLIENT]])
    rates["many"], _ = _rate(_hub_client, [ids[PER_CLIENT * (n + 1):PER_CLIENT * (n + 2)] for n in range(CLIENTS)])
    rates["bare_single"], rates["bare_cpu"] = _rate(_bare_client, [PER_CLIENT])
    rates["bare_many"], _ = _rate(_bare_client, [PER_CLIENT] * CLIENTS)
    cores = os.cpu_count() or 1
    for name, single, cpu in (("ceiling", rates["single"], rates["cpu"]),
                              ("bare_ceiling", rates["bare_single"], rates["bare_cpu"])):
        rates[name] = min(cores * 1000 / cpu, CLIENTS * single) / single if cpu else None
    return rates


# ---- /metrics and the capacity page -------------------------------------------------------------------------

def _run_sql(statements: list[str]):
    from django.db import connection

    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
            cursor.fetchall()


def metrics_ms() -> float:
    from prometheus_client import CollectorRegistry, generate_latest

    from portal.probes import HubCollector

    def scrape():
        registry = CollectorRegistry(auto_describe=False)
        registry.register(HubCollector())
        generate_latest(registry)

    scrape()
    return median_ms(scrape, 5)


_HOLDING = "('decommissioning', 'failed', 'pending', 'provisioning', 'running', 'stopped', 'upgrading')"
# Free slots per reef and kind from the rows, set-based: what /metrics and the capacity page show, bare.
FREE_SLOTS_SQL = f"""
SELECT r.id, r.max_instances - COALESCE(n.held, 0), cap.kind, cap.capacity - COALESCE(d.used, 0) - COALESCE(c.used, 0),
       COALESCE(s.free, 0), COALESCE(s.used, 0)
FROM cells_reef r
LEFT JOIN (SELECT reef_id, COUNT(*) AS held FROM cells_instance WHERE state IN {_HOLDING} GROUP BY reef_id) n
       ON n.reef_id = r.id
LEFT JOIN (SELECT reef_id, kind, SUM(capacity) AS capacity FROM cells_pool WHERE status = 'available'
           AND NOT dedicated GROUP BY reef_id, kind) cap ON cap.reef_id = r.id
LEFT JOIN (SELECT p.reef_id, COUNT(*) AS used FROM cells_instance i JOIN cells_pool p ON p.id = i.database_pool_id
           WHERE i.state IN {_HOLDING} GROUP BY p.reef_id) d ON d.reef_id = r.id AND cap.kind = 'database'
LEFT JOIN (SELECT p.reef_id, COUNT(*) AS used FROM cells_instance i JOIN cells_pool p ON p.id = i.compute_pool_id
           WHERE i.state IN {_HOLDING} GROUP BY p.reef_id) c ON c.reef_id = r.id AND cap.kind = 'compute'
LEFT JOIN (SELECT p.reef_id, COUNT(*) FILTER (WHERE s.status = 'available') AS free,
                  COUNT(*) FILTER (WHERE s.status <> 'available') AS used
           FROM cells_share s JOIN cells_pool p ON p.id = s.pool_id GROUP BY p.reef_id) s
       ON s.reef_id = r.id AND cap.kind = 'storage'
"""
METRICS_SQL = [
    "SELECT state, region_id, COUNT(*) FROM cells_instance GROUP BY state, region_id",
    FREE_SLOTS_SQL,
    "SELECT kind, state, COUNT(*) FROM cells_operation GROUP BY kind, state",
    "SELECT kind, state, COUNT(*), SUM(finished_at - started_at), COUNT(*) FILTER (WHERE finished_at - started_at "
    "<= interval '60 seconds') FROM cells_operation WHERE state IN ('succeeded', 'failed') GROUP BY kind, state",
    "SELECT id FROM cells_operation WHERE state IN ('queued', 'running')",
    "SELECT COUNT(*) FROM cells_instance WHERE state IN ('running', 'stopped', 'upgrading')",
    "SELECT b.kind, MIN(b.latest), MAX(b.latest), COUNT(*) FROM (SELECT x.instance_id, x.kind, MAX(x.taken_at) "
    "AS latest FROM provisioning_backup x JOIN cells_instance i ON i.id = x.instance_id WHERE x.state = 'succeeded' "
    "AND i.state IN ('running', 'stopped', 'upgrading') GROUP BY x.instance_id, x.kind) b GROUP BY b.kind",
    "SELECT COUNT(*) FILTER (WHERE h.status = 'unhealthy'), COUNT(*) FILTER (WHERE h.flagged_at IS NOT NULL) "
    "FROM cells_instance i LEFT JOIN provisioning_instancehealth h ON h.instance_id = i.id WHERE i.state = 'running'",
    "SELECT kind, direction, COUNT(*) FROM provisioning_orphan WHERE state IN ('open', 'confirmed') "
    "GROUP BY kind, direction",
    "SELECT name, next_run FROM django_q_schedule",
]
CAPACITY_SQL = [
    FREE_SLOTS_SQL,
    "SELECT reef_id, COUNT(*) FROM cells_instance WHERE created_at > now() - interval '24 hours' GROUP BY reef_id",
    "SELECT id, slug FROM cells_region",
    "SELECT region_id, COUNT(*) FROM cells_capacityshortfall GROUP BY region_id",
]


def capacity_page():
    """(median ms, bytes) of GET /admin/cells/reef/capacity/ as staff, and the median ms of an admin page with no data
    of ours (the password change form): the constant every admin page pays — session, user, the sidebar's app list,
    the base templates — which no query of the page's can save."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True,
                                                                                      "is_superuser": True})
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    response = client.get("/admin/cells/reef/capacity/")
    assert response.status_code == 200, response.status_code
    chrome = median_ms(lambda: client.get("/admin/password_change/"), 5)
    return median_ms(lambda: client.get("/admin/cells/reef/capacity/"), 5), len(response.content), chrome


# ---- planner facts, admin instance list, rollout planning ---------------------------------------------------

# The planner's numbers from the rows, set-based: free and used slots per reef and kind, and recent signups.
FACTS_SQL = [
    FREE_SLOTS_SQL,
    "SELECT reef_id, COUNT(*) FROM cells_instance WHERE created_at >= now() - interval '24 hours' GROUP BY reef_id",
    "SELECT id, slug, status, max_instances, capacity_overrides FROM cells_reef",
]


def facts_ms() -> float:
    from provisioning.capacity.facts import gather_facts

    gather_facts()
    return median_ms(gather_facts, 5)


INSTANCE_LIST_SQL = [
    "SELECT i.*, u.*, g.*, r.*, rg.* FROM cells_instance i JOIN auth_user u ON u.id = i.owner_id "
    "JOIN cells_region g ON g.id = i.region_id LEFT JOIN cells_reef r ON r.id = i.reef_id "
    "LEFT JOIN cells_region rg ON rg.id = r.region_id ORDER BY i.created_at DESC, i.id DESC LIMIT 100",
    "SELECT reltuples FROM pg_class WHERE relname = 'cells_instance'",
    "SELECT slug, name FROM cells_region ORDER BY slug",
    "SELECT version FROM cells_release ORDER BY version",
]


def instance_list_ms() -> tuple[float, float]:
    """(median ms of GET /admin/cells/instance/ — the first page, unfiltered, rendered — as staff, and the median ms
    of the SQL that page ran: every statement it sent, timed at the database cursor, fetch included)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True,
                                                                                      "is_superuser": True})
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    response = client.get("/admin/cells/instance/")
    assert response.status_code == 200, response.status_code
    page, sql = [], []

    def timed(execute, statement, params, many, context):
        started = time.perf_counter()
        try:
            return execute(statement, params, many, context)
        finally:
            spent[0] += time.perf_counter() - started

    for _ in range(5):
        spent = [0.0]
        started = time.perf_counter()
        with connection.execute_wrapper(timed):
            client.get("/admin/cells/instance/")
        page.append(time.perf_counter() - started)
        sql.append(spent[0])
    return statistics.median(page) * 1000, statistics.median(sql) * 1000


ROLLOUT_PLANS = 3


def rollout_plan_ms() -> tuple[float, float, int]:
    """(median ms of ``rollout_create`` over the whole fleet, of the same plan as bare SQL, and the statements one
    plan took). Each plan is deleted before the next."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from cells.choices import ReleaseState
    from cells.models import Release, Rollout
    from provisioning.rollouts import rollout_create

    Rollout.objects.all().delete()
    Release.objects.filter(image="bench").delete()  # a smaller fleet's
    releases = [Release.objects.create(version=f"9.{n}", image="bench", state=ReleaseState.AVAILABLE)
                for n in range(ROLLOUT_PLANS + 1)]
    with CaptureQueriesContext(connection) as queries:
        rollout_create(release=releases[0])
    statements = len(queries.captured_queries)
    Rollout.objects.all().delete()
    times = []
    for release in releases[1:]:
        started = time.perf_counter()
        rollout = rollout_create(release=release)
        times.append(time.perf_counter() - started)
        Rollout.objects.filter(pk=rollout.pk).delete()

    # The same plan as bare SQL, committed like the hub's (the targets' foreign keys are checked at commit): the
    # rollout row, one wave per ring, every target in one INSERT … SELECT, the waves' totals.
    bare_times = []
    for n in range(ROLLOUT_PLANS):
        release = Release.objects.create(version=f"9.bare{n}", image="bench", state=ReleaseState.AVAILABLE)
        started = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO cells_rollout (release_id, state, batch_size, bake_minutes, max_failures, "
                "max_failure_ratio, halt_reason, created_at, updated_at) "
                "VALUES (%s, 'planned', 10, 60, 2, 0.05, '', now(), now()) RETURNING id", [release.pk]
            )
            (rollout_id,) = cursor.fetchone()
            candidates = ("SELECT i.id, i.server_version, r.rollout_ring AS ring FROM cells_instance i "
                          "JOIN cells_reef r ON r.id = i.reef_id WHERE i.state IN ('running', 'stopped') "
                          "AND NOT i.version_pinned AND i.server_version <> %s")
            cursor.execute(
                "INSERT INTO cells_rolloutwave (rollout_id, position, ring, state, total, upgrading, succeeded, "
                "failed, skipped) SELECT %s, ROW_NUMBER() OVER (ORDER BY ring) - 1, ring, 'pending', COUNT(*), 0, 0, "
                f"0, 0 FROM ({candidates}) c GROUP BY ring", [rollout_id, release.version]
            )
            cursor.execute(
                "INSERT INTO cells_rollouttarget (rollout_id, wave_id, instance_id, state, from_version, note) "
                f"SELECT %s, w.id, c.id, 'pending', c.server_version, '' FROM ({candidates}) c "
                "JOIN cells_rolloutwave w ON w.rollout_id = %s AND w.ring = c.ring",
                [rollout_id, release.version, rollout_id],
            )
        bare_times.append(time.perf_counter() - started)
        Rollout.objects.filter(pk=rollout_id).delete()

    return statistics.median(times) * 1000, statistics.median(bare_times) * 1000, statements


# ---- the run ------------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    rows, first = [], {}
    with tempfile.TemporaryDirectory(prefix="cellhub-bench-") as var_dir:
        benchdb.setup_django(BENCH_DB, var_dir)
        try:
            for size in sizes:
                started = time.perf_counter()
                build_fleet(size)
                built = time.perf_counter() - started
                figures = {
                    "placement": placement_pair(),
                    "/metrics": (metrics_ms(), median_ms(lambda: _run_sql(METRICS_SQL), 5)),
                }
                page_ms, page_bytes, chrome_ms = capacity_page()
                figures["capacity page"] = (page_ms, median_ms(lambda: _run_sql(CAPACITY_SQL), 5))
                figures["planner facts"] = (facts_ms(), median_ms(lambda: _run_sql(FACTS_SQL), 5))
                list_page_ms, list_sql_ms = instance_list_ms()
                list_bare_ms = median_ms(lambda: _run_sql(INSTANCE_LIST_SQL), 5)
                figures["instance list"] = (list_page_ms, list_bare_ms)
                figures["list's SQL"] = (list_sql_ms, list_bare_ms)
                plan_ms, bare_plan_ms, plan_statements = rollout_plan_ms()
                figures["rollout plan"] = (plan_ms, bare_plan_ms)
                print(f"fleet {size:,}: built in {built:.1f} s; capacity page {page_bytes:,} bytes; "
                      f"rollout plan {plan_statements} statements; an admin page with no data of ours "
                      f"{chrome_ms:.1f} ms", flush=True)
                for name, (hub, bare) in figures.items():
                    first.setdefault(name, hub)
                    rows.append((size, name, hub, bare, hub / bare, hub / first[name]))
            conc = concurrency_rates()
        finally:
            benchdb.drop_database(BENCH_DB)
    goals = {"placement": "≤ 3×, flat ±20%", "/metrics": "≤ 2×, growth ≤ 5×", "capacity page": "≤ 2×, growth ≤ 5×",
             "planner facts": "≤ 2× (the bench adds reefs with the fleet: bare SQL grows alike)",
             "instance list": "flat (rendered: Django admin's templates, the same at any size)",
             "list's SQL": "≤ 2× at 100k",
             "rollout plan": "constant statements"}
    print(f"\n{'fleet':>8}  {'figure':<14} {'hub ms':>9} {'bare ms':>9} {'ratio':>7} {'vs first':>9}  goal")
    for size, name, hub, bare, ratio, growth in rows:
        print(f"{size:>8,}  {name:<14} {hub:>9.2f} {bare:>9.2f} {ratio:>6.2f}× {growth:>8.2f}×  {goals[name]}")
    print(f"\nplacement, {CLIENTS} clients over {CLIENTS} reefs vs 1 client (largest fleet), {os.cpu_count()} cores:")
    for label, key in (("hub ", ""), ("bare", "bare_")):
        single, many, cpu, ceiling = (conc[f"{key}single"], conc[f"{key}many"], conc[f"{key}cpu"],
                                      conc[f"{key}ceiling"])
        bound = (f"; {cpu:.2f} ms CPU per placement (client + server): these cores allow at most {ceiling:.2f}×"
                 if cpu else "")
        print(f"  {label} {single:8.0f}/s → {many:8.0f}/s  {many / single:.2f}×{bound}")
    print("  (goal ≥ 4×: reachable only where cores ÷ CPU per placement allow it)")

if __name__ == "__main__":
    main()
