import os
import uuid
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from tests.factories import make_user

# Resources the drivers create on the shared PostgreSQL server carry a prefix unique to this run,
# so parallel or leftover runs never collide; they are dropped at the end of the session.
RUN_PREFIX = f"t{uuid.uuid4().hex[:8]}"
ADMIN_DSN = "host={} port={} user={} dbname=postgres".format(
    os.environ.get("PGHOST", "127.0.0.1"), os.environ.get("PGPORT", "5432"), os.environ.get("PGUSER", "postgres")
)


@pytest.fixture(autouse=True, scope="session")
def _tests_run_on_postgresql(django_db_setup, django_db_blocker):
    """Locking and constraints are the production database's: refuse to pass on anything else."""
    if os.environ.get("CELLHUB_ALLOW_SQLITE_TESTS"):
        return
    with django_db_blocker.unblock():
        assert connection.vendor == "postgresql", "run the tests with DATABASE_URL on PostgreSQL (scripts/test)"


@pytest.fixture(autouse=True, scope="session")
def _drop_run_databases():
    yield
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        databases = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{RUN_PREFIX}%"])
        for (name,) in databases.fetchall():
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        roles = admin.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [f"{RUN_PREFIX}%"])
        for (name,) in roles.fetchall():
            admin.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture(autouse=True)
def hub_settings(settings, tmp_path):
    """Each test gets its own var directory, this run's resource prefix, and no backoff sleeps. The local runtime's
    supervisord of that var directory (with every instance process it runs) is shut down after the test."""
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    settings.CELLHUB = {
        **settings.CELLHUB,
        "VAR_DIR": var_dir,
        "RESOURCE_PREFIX": RUN_PREFIX,
        "STEP_BACKOFF": 0,
        "CLOUD_BACKOFF": 0,
    }
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    # Hashing passwords at production strength costs ~0.5 s per user; tests check logic, not strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    yield settings
    # The local runtime's supervisord of this var directory (and of one a test pointed VAR_DIR at), with every
    # instance process it runs, first.
    from provisioning.drivers.local_supervisor import Supervisor, kill_started

    for folder in {Path(settings.CELLHUB["VAR_DIR"]), var_dir}:
        supervisor = Supervisor(folder / "supervisor")
        if supervisor.pid_file.exists():  # started here or by a worker this test ran
            supervisor.kill()
    kill_started()  # started here under a folder that is gone already
    # SQLite databases are replicated by a Litestream process each: stop the ones this test started.
    from provisioning.drivers.litestream import Replicator

    for folder in {Path(settings.CELLHUB["VAR_DIR"]), var_dir}:
        for pool_folder in (folder / "litestream").glob("*"):
            if pool_folder.is_dir():
                Replicator.at(pool_folder).stop_all()


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttle counters live in the cache (per process in tests): each test starts with none used."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _no_armed_faults():
    from provisioning import faults

    faults.disarm_all()
    yield
    faults.disarm_all()


@pytest.fixture
def sync_tasks(monkeypatch):
    """django-q2 runs tasks inline, in the caller's process (the worker's code, without the worker)."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)


@pytest.fixture
def user(db):
    return make_user()


@pytest.fixture
def staff_user(db):
    return make_user(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def qcluster(settings):
    """Start real ``manage.py qcluster`` workers on the test database; stopped (killed) at teardown.

    Call it with extra environment (e.g. ``CELLHUB_FAILPOINTS``); it returns the process. Tests using
    it need committed data: mark them ``django_db(transaction=True)``.
    """
    import signal
    import subprocess
    import sys
    from pathlib import Path

    database = settings.DATABASES["default"]
    processes = []

    def start(**extra_env):
        env = {
            **os.environ,
            "DATABASE_URL": "postgres://{USER}@{HOST}:{PORT}/{NAME}".format(**database),
            "DEBUG": "1",
            "CELLHUB_VAR_DIR": str(settings.CELLHUB["VAR_DIR"]),
            "CELLHUB_RESOURCE_PREFIX": settings.CELLHUB["RESOURCE_PREFIX"],
            "CELLHUB_STEP_BACKOFF": "0",
            "CELLHUB_OPERATION_LEASE_SECONDS": "2",
            "Q_WORKERS": "1",
            "Q_TIMEOUT": "4",
            "Q_RETRY": "5",
            "CELLHUB_FAILPOINTS": "",
            **extra_env,
        }
        process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=Path(__file__).resolve().parent.parent, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        return process

    def kill(process):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    start.kill = kill
    yield start
    for process in processes:
        kill(process)


def wait_for(predicate, timeout=60.0, interval=0.2, message="condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {message}")
