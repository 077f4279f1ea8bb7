"""Project-level promises: production settings pass Django's deploy checks, migrations are complete,
and the fixed process endpoints answer."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _manage(*args, **env):
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


PRODUCTION = {"DEBUG": "0", "SECRET_KEY": "a-production-secret-" + "x" * 50, "ALLOWED_HOSTS": "hub.example.com",
              "CELLHUB_CREDENTIAL_KEY": "a-credential-key-of-its-own-" + "y" * 50}
BACKUP_KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMDAwMDA="


def test_check_deploy_passes_with_production_settings():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION, CELLHUB_BACKUP_KEY=BACKUP_KEY)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("key", "error"), [("", "cellhub.E010"), ("not-a-fernet-key", "cellhub.E011")])
def test_production_refuses_to_start_without_a_usable_backup_key(key, error):
    result = _manage("check", **PRODUCTION, CELLHUB_BACKUP_KEY=key)
    assert result.returncode != 0 and error in result.stderr and "CELLHUB_BACKUP_KEY" in result.stderr


def test_development_starts_without_a_backup_key():
    assert _manage("check", DEBUG="1", CELLHUB_BACKUP_KEY="").returncode == 0


def test_production_refuses_to_start_without_a_secret_key():
    environment = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env={**environment, "DEBUG": "0"},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "SECRET_KEY is required" in result.stderr


@pytest.mark.parametrize("redis_url, broker", [("redis://127.0.0.1:6379/0", "Redis"), ("", "ORM")])
def test_redis_is_the_broker_whenever_redis_url_is_set(redis_url, broker, tmp_path):
    """The ORM broker polls the database (a pickup costs up to its poll interval and a query per poll per worker);
    Redis hands a task to a waiting worker at once: it is the broker as soon as there is one."""
    environment = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}}
    environment["CELLHUB_VAR_DIR"] = str(tmp_path)  # an empty SQLite database: nothing is read from it
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from django_q.brokers import get_broker; print(type(get_broker()).__name__)"],
        cwd=ROOT, env={**environment, **({"REDIS_URL": redis_url} if redis_url else {})},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == broker


def test_no_migrations_left_to_make():
    result = _manage("makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db
def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_fixed_urls_exist(client, staff_user):
    client.force_login(staff_user)
    for url in ["/admin/", "/instances/", "/api/v1/", "/api/schema/", "/api/docs/", "/metrics"]:
        assert client.get(url).status_code == 200, url


def test_the_embedded_sqlite_default_migrates_from_scratch_and_enforces_the_share_rules(tmp_path):
    """The first README command runs on SQLite: every migration applies to an empty file, and the
    share/pool triggers hold there too."""
    import sqlite3

    database = tmp_path / "hub.sqlite3"
    result = _manage("migrate", "--no-input", DATABASE_URL=f"sqlite:///{database}", DEBUG="1",
                     CELLHUB_VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _manage("seed_demo", DATABASE_URL=f"sqlite:///{database}", DEBUG="1",
                   CELLHUB_VAR_DIR=str(tmp_path)).returncode == 0
    with sqlite3.connect(database) as connection:
        pool_id, capacity = connection.execute(
            "SELECT id, capacity FROM cells_pool WHERE kind = 'storage' LIMIT 1").fetchone()
        with pytest.raises(sqlite3.IntegrityError, match="share_slot_below_capacity"):
            connection.execute("INSERT INTO cells_share (pool_id, slot, name, endpoint, status, firewall_address) "
                               "VALUES (?, ?, 'x', '', 'available', '')", (pool_id, capacity))
    # Migrating again (as every start of scripts/dev does) keeps working with the triggers in place.
    again = _manage("migrate", "--no-input", DATABASE_URL=f"sqlite:///{database}", DEBUG="1",
                    CELLHUB_VAR_DIR=str(tmp_path))
    assert again.returncode == 0, again.stderr


HEALTH_PASS_ON_SQLITE = """
from django.contrib.auth import get_user_model
from cells.models import Instance, Pool, Region
from provisioning.health import health_check_pass
from provisioning.models import HealthCheck, InstanceHealth
region = Region.objects.get(slug="local")
compute = Pool.objects.filter(kind="compute").first()
Pool.objects.filter(pk=compute.pk).update(provider="kubernetes", config={"kubeconfig": "/nonexistent/kubeconfig"})
owner = get_user_model().objects.create_user(username="ada", email="ada@example.com", password="x")
for name in ("alpha", "beta"):
    Instance.objects.create(name=name, owner=owner, region=region, reef=compute.reef, compute_pool=compute,
                            state="running", server_version="2026.4.1", hostname=name + ".cells.localhost")
InstanceHealth.objects.create(instance=Instance.objects.get(name="alpha"), status="healthy")  # was healthy before
first, second = health_check_pass(), health_check_pass()
print("PASSES", first, second)
print("ROWS", HealthCheck.objects.count(), sorted(InstanceHealth.objects.values_list("status", flat=True)),
      InstanceHealth.objects.filter(checking_since__isnull=False).count())
"""


def test_the_health_pass_runs_on_the_embedded_sqlite_default(tmp_path):
    """The scheduled health pass claims, writes and records history on SQLite too (its set-based SQL is
    PostgreSQL's; the embedded default takes the ORM's path): a cluster that cannot be asked makes each instance
    ``unknown`` (a health row made for the one never checked), the one that was healthy gets one history row for
    the change, a second pass records nothing new, and every claim is released."""
    database = f"sqlite:///{tmp_path / 'hub.sqlite3'}"
    env = {"DATABASE_URL": database, "DEBUG": "1", "CELLHUB_VAR_DIR": str(tmp_path), "CELLHUB_BACKUP_KEY": BACKUP_KEY}
    assert _manage("migrate", "--no-input", **env).returncode == 0
    assert _manage("seed_demo", **env).returncode == 0
    result = _manage("shell", "-c", HEALTH_PASS_ON_SQLITE, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    passes = next(line for line in result.stdout.splitlines() if line.startswith("PASSES"))
    assert "'unknown': 2" in passes and "errors" not in passes, passes
    assert "ROWS 1 ['unknown', 'unknown'] 0" in result.stdout, result.stdout
