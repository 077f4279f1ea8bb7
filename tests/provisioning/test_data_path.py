"""The hub is not in the instances' data path: with the hub stopped — no worker, no web process, and its own database
closed to every connection — a running instance's database, share and deployment keep working.

Shown on the local drivers with PostgreSQL: a process with no Django in it uses only what the instance's own
deployment carries (its manifests: the database URL in its Secret, the share mounted as its volume)."""
import json
import subprocess
import sys
import textwrap

import psycopg
import pytest
from django.db import connections

from cells.choices import InstanceState, Provider
from cells.models import Instance
from provisioning import drivers
from provisioning.lifecycle import instance_signup
from tests.conftest import ADMIN_DSN
from tests.factories import make_cell

pytestmark = [pytest.mark.django_db(transaction=True)]

# Runs with ``python -I``: no project on the path, no Django imported — only the instance's own pieces.
INSTANCE_SIDE = textwrap.dedent('''
    import json, pathlib, sys
    import psycopg, yaml

    manifests_path, hub_dsn = sys.argv[1], sys.argv[2]
    assert "django" not in sys.modules
    try:
        import cells  # noqa: F401  (the hub's code is not even importable here)
        hub_code = True
    except ImportError:
        hub_code = False
    documents = list(yaml.safe_load_all(pathlib.Path(manifests_path).read_text()))
    secret = next(d for d in documents if d["kind"] == "Secret")
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    share = pathlib.Path(deployment["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"])
    try:
        psycopg.connect(hub_dsn, connect_timeout=5).close()
        hub_database = "answered"
    except psycopg.OperationalError as error:
        hub_database = str(error).strip().splitlines()[-1]
    with psycopg.connect(secret["stringData"]["DATABASE_URL"], connect_timeout=5, autocommit=True) as database:
        database.execute("CREATE TABLE IF NOT EXISTS notes (body text)")
        database.execute("INSERT INTO notes VALUES ('written while the hub was down')")
        rows = [row[0] for row in database.execute("SELECT body FROM notes")]
    (share / "upload.txt").write_text("a file written while the hub was down")
    print(json.dumps({
        "hub_code": hub_code, "hub_database": hub_database, "rows": rows,
        "share_files": sorted(p.name for p in share.iterdir()), "share_read": (share / "upload.txt").read_text(),
        "replicas": deployment["spec"]["replicas"],
        "image": deployment["spec"]["template"]["spec"]["containers"][0]["image"],
    }))
''')


def test_a_running_instance_keeps_working_with_the_hub_stopped(settings, sync_tasks):
    cell = make_cell(capacity=2, database_provider=Provider.POSTGRES)
    operation = instance_signup(
        name="independent", region=cell["reef"].region,
        new_owner={"email": "i@example.com", "password": "a-long-enough-passphrase"},
    )
    instance = Instance.objects.get(pk=operation.instance_id)
    assert instance.state == InstanceState.RUNNING
    manifests = drivers.for_pool(cell["compute"]).manifest_path(instance)
    hub = settings.DATABASES["default"]
    hub_dsn = f"host={hub['HOST']} port={hub['PORT']} user={hub['USER']} dbname={hub['NAME']}"

    # Stop the hub: its connections closed, and its database refusing new ones.
    connections.close_all()
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{hub["NAME"]}" WITH ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                      "AND pid <> pg_backend_pid()", [hub["NAME"]])
    try:
        result = subprocess.run(
            [sys.executable, "-I", "-c", INSTANCE_SIDE, str(manifests), hub_dsn],
            capture_output=True, text=True, timeout=60, cwd="/",
        )
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{hub["NAME"]}" WITH ALLOW_CONNECTIONS true')
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)

    assert seen["hub_code"] is False
    assert "not currently accepting connections" in seen["hub_database"]  # the hub really was down
    assert seen["rows"] == ["written while the hub was down"]  # its own database, with its own login
    assert seen["share_files"] == ["upload.txt"] and seen["share_read"] == "a file written while the hub was down"
    assert seen["replicas"] == 1 and seen["image"].endswith(f":{instance.server_version}")

    # The hub comes back to find the instance as it left it, and the instance's data is its own.
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    database = drivers.for_pool(cell["database"])
    credentials = database.credentials(instance)
    with psycopg.connect(credentials.url, autocommit=True) as own:
        assert own.execute("SELECT count(*) FROM notes").fetchone()[0] == 1
    share = instance.share
    assert (drivers.for_pool(share.pool).share_path(share) / "upload.txt").is_file()
