"""The hub is not in the instances' data path: with the hub stopped — its worker killed, no web process, and its own
database closed to every connection — a running instance keeps answering at its own address and keeps using its
own database and share.

Shown on the local runtime with PostgreSQL: a real ``qcluster`` worker provisions the instance (and so starts the
supervisor), the worker is killed, the hub's database refuses connections, and the instance's own process — the
reference server under supervisord, importing nothing of the hub — serves, writes a note, stores a file."""
import os
import signal

import psycopg
import pytest
import requests
from django.db import connections

from cells.choices import InstanceState, Provider
from cells.models import Instance
from provisioning import drivers
from provisioning.drivers.local_supervisor import Supervisor
from provisioning.lifecycle import instance_signup
from provisioning.ports import instance_port
from tests.conftest import ADMIN_DSN, wait_for
from tests.factories import make_cell

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _instance_is_running(name):
    instance = Instance.objects.filter(name=name).first()
    return instance if instance and instance.state == InstanceState.RUNNING else None


def test_a_running_instance_keeps_serving_with_the_hub_stopped(settings, qcluster):
    cell = make_cell(capacity=2, database_provider=Provider.POSTGRES)
    worker = qcluster()
    instance_signup(
        name="independent", region=cell["reef"].region,
        new_owner={"email": "i@example.com", "password": "a-long-enough-passphrase"},
    )
    instance = wait_for(lambda: _instance_is_running("independent"), timeout=90, message="the instance to run")
    port = instance_port(instance)
    base, host = f"http://127.0.0.1:{port}", {"Host": f"{instance.hostname}:{port}"}
    assert requests.get(f"{base}/api/health", headers=host, timeout=5).status_code == 200

    # Stop the hub: the worker killed (the supervisor it started lives on, in a session of its own), the web
    # process absent, the hub's database closed and refusing new connections.
    supervisor = Supervisor.default()
    daemon = supervisor.pid()
    assert os.getsid(daemon) != os.getsid(worker.pid)
    qcluster.kill(worker)
    hub = settings.DATABASES["default"]
    connections.close_all()
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{hub["NAME"]}" WITH ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                      "AND pid <> pg_backend_pid()", [hub["NAME"]])
    try:
        hub_dsn = f"host={hub['HOST']} port={hub['PORT']} user={hub['USER']} dbname={hub['NAME']} connect_timeout=5"
        with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
            psycopg.connect(hub_dsn).close()  # the hub really is down
        os.kill(daemon, 0)  # the supervisor still runs
        health = requests.get(f"{base}/api/health", headers=host, timeout=5)
        assert health.status_code == 200 and health.json()["version"] == instance.server_version
        posted = requests.post(f"{base}/notes", data={"body": "written while the hub was down"}, headers=host,
                               timeout=5, allow_redirects=False)
        assert posted.status_code == 303
        uploaded = requests.post(f"{base}/files", files={"file": ("upload.txt", b"a file written while the hub was "
                                                                               b"down")}, headers=host, timeout=5,
                                 allow_redirects=False)
        assert uploaded.status_code == 303
        page = requests.get(f"{base}/", headers=host, timeout=5).text
        assert "written while the hub was down" in page and "upload.txt" in page
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{hub["NAME"]}" WITH ALLOW_CONNECTIONS true')

    # The hub comes back to find the instance as it left it; the data is in the instance's own database and share.
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    credentials = drivers.for_pool(cell["database"]).credentials(instance)
    with psycopg.connect(credentials.url, autocommit=True) as own:
        assert own.execute("SELECT body FROM notes").fetchall() == [("written while the hub was down",)]
    share = instance.share
    assert (drivers.for_pool(share.pool).share_path(share) / "upload.txt").read_bytes().startswith(b"a file")
    os.kill(daemon, signal.SIGCONT)  # (a no-op that fails if the supervisor had died)
