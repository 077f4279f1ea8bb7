"""What every benchmark needs: its own throwaway PostgreSQL database, Django set up on it, migrated.

Two people (or two helpers) may benchmark on one server: each benchmark takes its database name from
``CELLHUB_BENCH_DATABASE`` (else its own default) and the prefix of the resources it makes (instance databases and
roles, folders) from ``CELLHUB_BENCH_PREFIX`` (default ``bench``), and drops only what carries them.
"""
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ADMIN = "host={} port={} user={} dbname=postgres".format(
    os.environ.get("PGHOST", "127.0.0.1"), os.environ.get("PGPORT", "5432"), os.environ.get("PGUSER", "postgres")
)


PREFIX = os.environ.get("CELLHUB_BENCH_PREFIX", "bench")


def database_name(default: str) -> str:
    """The benchmark's database: ``CELLHUB_BENCH_DATABASE`` when set, else ``default``."""
    return os.environ.get("CELLHUB_BENCH_DATABASE", default)


def setup_django(database: str, var_dir: str) -> None:
    """(Re)create ``database``, point Django at it with the local drivers under ``var_dir``, and migrate."""
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
    os.environ.update(
        DATABASE_URL="postgres://{}@{}:{}/{}".format(
            os.environ.get("PGUSER", "postgres"), os.environ.get("PGHOST", "127.0.0.1"),
            os.environ.get("PGPORT", "5432"), database,
        ),
        DEBUG="1",
        CELLHUB_VAR_DIR=var_dir,
        CELLHUB_RESOURCE_PREFIX=PREFIX,
        DJANGO_SETTINGS_MODULE="portal.settings",
        LOG_LEVEL="WARNING",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def drop_database(database: str) -> None:
    from django.db import connections

    connections.close_all()
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@contextlib.contextmanager
def qcluster(env: dict, workers: int = 1, settle_seconds: float = 3.0):
    """A real ``manage.py qcluster`` with ``workers`` workers and ``env``, in its own session; waits
    ``settle_seconds`` for its workers to start, and stops it (TERM, then KILL) on the way out."""
    from django.db import connections

    connections.close_all()
    cluster = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=ROOT,
                               env={**env, "Q_WORKERS": str(workers)}, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(settle_seconds)
        yield cluster
    finally:
        os.killpg(cluster.pid, signal.SIGTERM)
        try:
            cluster.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(timeout=10)
