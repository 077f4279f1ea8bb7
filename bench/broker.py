"""Benchmark: how long a queued task waits before a worker starts it, with the ORM broker and with Redis.

    .venv/bin/python bench/broker.py [--tasks 40]

For each broker it starts one real ``manage.py qcluster`` (one worker) on a throwaway database, then queues
``--tasks`` trivial tasks one at a time, each after the previous finished (an idle worker, as when an operation is
requested), and prints the median and 90th percentile of the pickup: from ``async_task`` returning to the worker's
clock when it runs the task (the task is ``time.time``). The ORM broker finds a task by polling the database
(``Q_CLUSTER["poll"]``); Redis hands it to a worker blocked on the list at once.

The database is ``$CELLHUB_BENCH_DATABASE`` (default ``cellhub_bench_broker``), dropped at the end; Redis is
``$CELLHUB_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/11``, a database of its own), flushed before and after.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchdb  # noqa: E402  (bench/ is on the path when a script runs)

BENCH_DB = benchdb.database_name("cellhub_bench_broker")
REDIS_URL = os.environ.get("CELLHUB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")


def enqueue(count: int) -> None:
    """(In a child process, with the broker chosen by its environment.) Queue ``count`` tasks one after another;
    print each pickup in milliseconds."""
    import django

    django.setup()
    from django_q.tasks import async_task, fetch

    for _ in range(count):
        queued = time.time()
        task_id = async_task("time.time")  # its result is the moment the worker ran it
        deadline = time.monotonic() + 30
        while (task := fetch(task_id)) is None:
            if time.monotonic() > deadline:
                raise SystemExit("no worker picked the task up within 30 s")
            time.sleep(0.005)
        print((task.result - queued) * 1000, flush=True)


def measure(broker: str, count: int, env: dict) -> list[float]:
    env = dict(env)
    if broker == "redis":
        env["REDIS_URL"] = REDIS_URL
    else:
        env.pop("REDIS_URL", None)
    with benchdb.qcluster(env):
        child = subprocess.run([sys.executable, __file__, "--enqueue", str(count)], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=600)
    if child.returncode:
        raise SystemExit(child.stderr)
    return [float(line) for line in child.stdout.split()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--enqueue", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.enqueue:
        return enqueue(args.enqueue)
    import redis

    store = redis.Redis.from_url(REDIS_URL)
    store.flushdb()
    with tempfile.TemporaryDirectory(prefix="cellhub-bench-") as var_dir:
        benchdb.setup_django(BENCH_DB, var_dir)
        try:
            from django.db import connections

            connections.close_all()
            env = {**os.environ, "LOG_LEVEL": "WARNING"}
            results = {broker: measure(broker, args.tasks, env) for broker in ("orm", "redis")}
        finally:
            benchdb.drop_database(BENCH_DB)
            store.flushdb()
    print(f"\npickup of a queued task by an idle worker ({args.tasks} tasks each, one at a time):")
    for broker, times in results.items():
        ninetieth = statistics.quantiles(times, n=10)[-1]
        print(f"  {broker:<6} median {statistics.median(times):7.1f} ms   p90 {ninetieth:7.1f} ms")
    ratio = statistics.median(results["orm"]) / statistics.median(results["redis"])
    print(f"  ORM / Redis: {ratio:.0f}×")


if __name__ == "__main__":
    main()
