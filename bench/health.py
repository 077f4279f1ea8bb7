"""Benchmark: one health pass over a fleet, beside the bare work of the same size measured in the same run.

    .venv/bin/python bench/health.py --instances 50000 --pools 500 [--ports 21700,21701]

It builds ``instances`` running instances spread over ``pools`` reefs (INSERT … SELECT generate_series, triggers off,
slot counters and tallies refilled from the rows), each reef with one Kubernetes compute pool, a storage pool whose
share is assigned to each instance (its firewall already at the pool's egress address), a database pool, and one
succeeded provision operation per instance. Then it times ``health_check_pass`` twice: the first pass (every
instance a change: unknown → healthy, a history row each) and a steady pass (nothing changed: what every later pass
costs), counting the statements each sends.

What is real: the hub's code end to end (the pass, the ``kubernetes`` driver through the kubernetes client with a
kubeconfig per pool, ``http.client`` for the HTTP checks), PostgreSQL, and both servers' wire: one process serves the
Kubernetes API on 127.0.0.1 for every pool (each pool's kubeconfig names ``http://127.0.0.1:<port>/pool/<id>``, and
the list call of that path answers that pool's deployments — the manifests ``manifests.render`` makes, with a ready
status — paged with ``limit``/``continue`` as the API server does), another answers every instance's health URL
(``health_url``: ``http://127.0.0.1:<port>/{hostname}/api/health``, HTTP/1.1 keep-alive, the version the hub
expects). What is not: no cluster runs the deployments, and one server stands in for 50,000 instances' ingresses.

Baselines, the same work with nothing of the hub's: the bare SQL (one query reading the same rows — instances not
busy, with their share and health — and one ``UPDATE`` of every health row's ``checked_at``), the raw list calls
(one GET per pool with ``urllib``, JSON parsed), and the raw HTTP checks (the same GETs on the same bounded thread
pool, a kept-alive connection per worker).

The database is ``$CELLHUB_BENCH_DATABASE`` (default ``cellhub_bench_health``), dropped at the end; resources are
named with ``$CELLHUB_BENCH_PREFIX``; the servers listen on ``--ports`` (or ``$CELLHUB_BENCH_PORTS``; default: ports
the system picks) and are stopped at the end. Nothing else is touched.
"""
import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchdb  # noqa: E402  (bench/ is on the path when a script runs)

BENCH_DB = benchdb.database_name("cellhub_bench_health")
VERSION = "1.0"
IMAGE = "ghcr.io/cellhub/server"
EGRESS = "127.0.0.1"


def _dsn():
    return benchdb.ADMIN.replace("dbname=postgres", f"dbname={BENCH_DB}")


# ---- the servers (each in a process of its own, as the cluster and the instances are) --------------------------

def _serve_kube(port, bodies, ready):
    """The Kubernetes API of every pool: ``GET /pool/<id>/apis/apps/v1/deployments`` answers that pool's deployments,
    ``limit`` at a time with a ``continue`` token."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlparse

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (the standard library's name)
            url = urlparse(self.path)
            parts = url.path.split("/")
            query = parse_qs(url.query)
            if len(parts) < 3 or parts[1] != "pool" or not url.path.endswith("/apis/apps/v1/deployments"):
                return self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            items = bodies.get(int(parts[2]), [])
            start = int(query.get("continue", ["0"])[0])
            limit = int(query.get("limit", [str(len(items) or 1)])[0])
            page = {"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {},
                    "items": items[start:start + limit]}
            if start + limit < len(items):
                page["metadata"]["continue"] = str(start + limit)
            self._send(200, page)

        def _send(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    ready.put(server.server_address[1])
    server.serve_forever()


def _serve_health(port, ready):
    """Every instance's health endpoint: 200 with the version the hub expects, HTTP/1.1 keep-alive. An asyncio
    server: it stands in for thousands of instances, so it must not be what the pass waits for."""
    import asyncio

    body = json.dumps({"status": "ok", "version": VERSION}).encode()
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body

    async def connection(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # a GET: no body
                writer.write(answer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        writer.close()

    async def serve():
        server = await asyncio.start_server(connection, "127.0.0.1", port, backlog=1024)
        ready.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def _start(target, *args):
    ready = multiprocessing.Queue()
    process = multiprocessing.Process(target=target, args=(*args, ready), daemon=True)
    process.start()
    return process, ready.get(timeout=60)


# ---- the fleet ------------------------------------------------------------------------------------------------

def build_fleet(instances: int, pools: int, var_dir: str, health_port: int) -> None:
    """``instances`` running instances evenly over ``pools`` reefs of region ``bench`` (see the module's docstring);
    the compute pools' kubeconfigs are written when the API server's port is known (``write_kubeconfigs``)."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from cells.counters import counters_refill
    from cells.tally import tally_refill

    per_pool = instances // pools
    capacity = per_pool + 25
    owner, _ = get_user_model().objects.get_or_create(username="bench")
    health_url = f"http://127.0.0.1:{health_port}/{{hostname}}/api/health"
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")  # no triggers: the counters are refilled below
        cursor.execute("INSERT INTO cells_region (slug, name, cloud, location, status, maintenance_weekday, "
                       "maintenance_hour) VALUES ('bench', 'Bench', 'azure', 'westus2', 'active', 6, 2)")
        cursor.execute(
            "INSERT INTO cells_reef (region_id, slug, status, max_instances, rollout_ring, ingress_address, "
            "capacity_overrides, status_reason, created_at, placed_instances) "
            "SELECT g.id, 'r' || n, 'active', %s, n %% 3, '127.0.0.1', '{}'::jsonb, '', now(), 0 "
            "FROM cells_region g, generate_series(1, %s) n WHERE g.slug = 'bench'",
            [capacity, pools],
        )
        cursor.execute(
            "INSERT INTO cells_pool (reef_id, name, kind, provider, external_id, capacity, status, dedicated, config, "
            "status_reason, created_at, slots_held, shares_available) "
            "SELECT r.id, k.kind || '-1', k.kind, k.provider, '', %s, 'available', false, '{}'::jsonb, '', now(), 0, 0 "
            "FROM cells_reef r, (VALUES ('database', 'sqlite'), ('storage', 'local_fs'), "
            "('compute', 'kubernetes')) k(kind, provider)",
            [capacity],
        )
        cursor.execute(
            "UPDATE cells_pool SET config = jsonb_build_object('kubeconfig', %s || '/kube-' || id || '.yaml', "
            "'context', 'bench', 'health_url', %s::text, 'firewall_address', 'egress', 'egress_address', %s::text) "
            "WHERE kind = 'compute'",
            [var_dir, health_url, EGRESS],
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
            "SELECT 'h' || r.id || '-' || n, %s, r.region_id, r.id, d.id, c.id, %s, 'running', 'shared', 500, "
            "1024, 'h' || r.id || '-' || n || '.cells.example.com', false, now() - n * interval '1 hour', now() "
            "FROM cells_reef r JOIN cells_pool d ON d.reef_id = r.id AND d.kind = 'database' "
            "JOIN cells_pool c ON c.reef_id = r.id AND c.kind = 'compute', generate_series(1, %s) n",
            [owner.pk, VERSION, per_pool],
        )
        cursor.execute(
            "UPDATE cells_share s SET status = 'assigned', instance_id = i.id, firewall_address = %s FROM ("
            "SELECT i.id, p.id AS pool_id, row_number() OVER (PARTITION BY i.reef_id ORDER BY i.id) - 1 AS slot "
            "FROM cells_instance i JOIN cells_pool p ON p.reef_id = i.reef_id AND p.kind = 'storage') i "
            "WHERE s.pool_id = i.pool_id AND s.slot = i.slot",
            [EGRESS],
        )
        cursor.execute(
            "INSERT INTO cells_operation (kind, state, instance_id, params, task_id, attempts, steps, error, "
            "cleanup_state, cleanup_error, created_at, started_at, finished_at, updated_at) "
            "SELECT 'provision', 'succeeded', i.id, '{}'::jsonb, '', 1, '[]'::jsonb, '', 'none', '', i.created_at, "
            "i.created_at, i.created_at + interval '40 seconds', i.created_at FROM cells_instance i"
        )
        cursor.execute("SET session_replication_role = DEFAULT")
        counters_refill()
        tally_refill()
        cursor.execute("ANALYZE")


def deployments_by_pool() -> dict[int, list[dict]]:
    """Each compute pool's deployments as its cluster would list them: the Deployment ``manifests.render`` makes for
    each instance, with a ready status."""
    from cells.models import Instance
    from provisioning.drivers import manifests
    from provisioning.drivers.base import DeploymentSpec, resource_name

    bodies: dict[int, list[dict]] = {}
    rows = Instance.objects.values_list("pk", "name", "hostname", "compute_pool_id").order_by("pk")
    for pk, name, hostname, pool_id in rows:
        spec = DeploymentSpec(name=name, namespace=resource_name("i", pk), image=IMAGE, version=VERSION,
                              cpu_millicores=500, memory_mib=1024, hostname=hostname,
                              database_url="postgresql://bench@127.0.0.1/bench", share_endpoint="nfs://10.0.0.5/s",
                              share_name="s")
        deployment = next(m for m in manifests.render(spec) if m["kind"] == "Deployment")
        deployment["status"] = {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}
        bodies.setdefault(pool_id, []).append(deployment)
    return bodies


def write_kubeconfigs(var_dir: str, kube_port: int) -> None:
    import yaml

    from cells.models import Pool

    for pool in Pool.objects.filter(kind="compute"):
        Path(pool.config["kubeconfig"]).write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "bench",
            "clusters": [{"name": "bench", "cluster": {"server": f"http://127.0.0.1:{kube_port}/pool/{pool.pk}"}}],
            "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
            "users": [{"name": "bench", "user": {"token": "bench-token"}}],
        }))


# ---- measurements ---------------------------------------------------------------------------------------------

def timed_pass() -> tuple[float, int, dict]:
    """One ``health_check_pass``: seconds, statements sent, its counts."""
    from django.db import connection

    from provisioning.health import health_check_pass

    statements = [0]

    def count(execute, sql, params, many, context):
        statements[0] += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        started = time.perf_counter()
        counts = health_check_pass()
        elapsed = time.perf_counter() - started
    return elapsed, statements[0], counts


def bare_sql() -> float:
    """The same rows read in one query, and one UPDATE of every health row's ``checked_at``."""
    import psycopg

    with psycopg.connect(_dsn()) as conn:
        started = time.perf_counter()
        rows = conn.execute(
            "SELECT i.id, i.name, i.hostname, i.server_version, i.compute_pool_id, s.firewall_address, h.status, "
            "h.action, h.restart_attempts, h.flagged_at FROM cells_instance i "
            "LEFT JOIN cells_share s ON s.instance_id = i.id "
            "LEFT JOIN provisioning_instancehealth h ON h.instance_id = i.id "
            "WHERE i.state = 'running' AND i.compute_pool_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
            "cells_operation o WHERE o.instance_id = i.id AND o.state IN ('queued', 'running'))"
        ).fetchall()
        conn.execute("UPDATE provisioning_instancehealth SET checked_at = now() WHERE instance_id = ANY(%s)",
                     [[row[0] for row in rows]])
        conn.commit()
        return time.perf_counter() - started


def raw_list_calls(kube_port: int) -> float:
    """One GET of each pool's deployments (paged as the driver pages), JSON parsed."""
    from urllib.request import urlopen

    from cells.models import Pool
    from provisioning.drivers.kubernetes import LIST_PAGE

    pools = list(Pool.objects.filter(kind="compute").values_list("pk", flat=True))
    started = time.perf_counter()
    for pk in pools:
        token = None
        while True:
            url = f"http://127.0.0.1:{kube_port}/pool/{pk}/apis/apps/v1/deployments?limit={LIST_PAGE}"
            with urlopen(url + (f"&continue={token}" if token else "")) as response:
                token = json.loads(response.read()).get("metadata", {}).get("continue")
            if not token:
                break
    return time.perf_counter() - started


def raw_http(health_port: int, concurrency: int) -> float:
    """The same GETs on a bounded thread pool, each worker on its own kept-alive ``http.client`` connection,
    answers parsed; nothing else."""
    import http.client
    import threading

    from cells.models import Instance

    hostnames = list(Instance.objects.values_list("hostname", flat=True))
    local = threading.local()

    def ask(names):
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", health_port, timeout=5)
        for hostname in names:
            local.connection.request("GET", f"/{hostname}/api/health")
            json.loads(local.connection.getresponse().read())

    step = -(-len(hostnames) // concurrency)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as executor:
        list(executor.map(ask, [hostnames[i:i + step] for i in range(0, len(hostnames), step)]))
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=50000)
    parser.add_argument("--pools", type=int, default=500)
    parser.add_argument("--ports", default=os.environ.get("CELLHUB_BENCH_PORTS", "0,0"),
                        help="the Kubernetes API's and the health server's ports (0: the system picks)")
    args = parser.parse_args()
    kube_port, health_port = (int(p) for p in args.ports.split(","))
    os.environ["CELLHUB_HEALTH_HTTP"] = "1"
    servers = []
    with tempfile.TemporaryDirectory(prefix=f"{benchdb.PREFIX}-health-") as var_dir:
        benchdb.setup_django(BENCH_DB, var_dir)
        from django.conf import settings

        try:
            health_process, health_port = _start(_serve_health, health_port)
            servers.append(health_process)
            started = time.perf_counter()
            build_fleet(args.instances, args.pools, var_dir, health_port)
            kube_process, kube_port = _start(_serve_kube, kube_port, deployments_by_pool())
            servers.append(kube_process)
            write_kubeconfigs(var_dir, kube_port)
            size = args.instances // args.pools * args.pools
            print(f"fleet: {size} running instances in {args.pools} compute pools, built in "
                  f"{time.perf_counter() - started:.1f} s; HEALTH_HTTP_CONCURRENCY "
                  f"{settings.CELLHUB['HEALTH_HTTP_CONCURRENCY']}")

            from provisioning import drivers

            drivers.driver_class("kubernetes")  # the drivers' modules imported, as in a worker that ran before
            first, first_statements, first_counts = timed_pass()
            print(f"first pass (every check a change): {first:6.2f} s, {first_statements} statements "
                  f"({first_statements / size:.3f} per instance); {first_counts}")
            steady, statements, counts = timed_pass()
            print(f"steady pass (nothing changed):      {steady:6.2f} s, {statements} statements "
                  f"({statements / size:.4f} per instance); {counts}   [goal: < 30 s, <= 1 per instance]")

            sql = bare_sql()
            lists = raw_list_calls(kube_port)
            http = raw_http(health_port, settings.CELLHUB["HEALTH_HTTP_CONCURRENCY"])
            floor = sql + lists + http
            print(f"baselines: bare SQL {sql:.2f} s + raw list calls ({args.pools}) {lists:.2f} s + raw HTTP "
                  f"({size} GETs) {http:.2f} s = {floor:.2f} s")
            print(f"steady pass / baselines: {steady / floor:.2f}x   first pass / baselines: {first / floor:.2f}x")
        finally:
            for process in servers:
                process.terminate()
                process.join(timeout=10)
            benchdb.drop_database(BENCH_DB)


if __name__ == "__main__":
    main()
