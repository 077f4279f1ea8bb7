"""The local runtime: every local instance is a real process run by supervisord, driven through its XML-RPC API.

Deploy, scale, set_image, restart, delete and status act on the process; status says what it really does; a killed
process is found by the health pass and restarted through supervisord, then flagged beyond the attempts."""
import json
import os
import signal
import socket
import time

import pytest
import requests

from cells.choices import InstanceState
from cells.models import Release
from provisioning import drivers
from provisioning.drivers.local_supervisor import Supervisor
from provisioning.health import health_check_pass
from provisioning.models import HealthAction, HealthCheck, InstanceHealth, InstancePort
from provisioning.ports import instance_address, instance_port, instance_port_allocate, port_is_free
from tests.conftest import wait_for
from tests.factories import make_cell, make_instance
from tests.provisioning import test_backups as shared
from tests.provisioning.test_backups import signup

pytestmark = pytest.mark.django_db
run = shared.run


def _compute(instance):
    return drivers.for_pool(instance.compute_pool)


def _ask(instance, path="/api/health"):
    """GET the instance's own address as a browser would (``*.localhost`` is the loopback)."""
    port = instance_port(instance)
    return requests.get(f"http://127.0.0.1:{port}{path}", headers={"Host": f"{instance.hostname}:{port}"}, timeout=5)


def _answers(port) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _pid(instance) -> int:
    return Supervisor.default().info(_compute(instance).namespace(instance))["pid"]


@pytest.fixture
def instance(run):
    return signup(run, make_cell(capacity=3), name="acme")


def test_a_provisioned_instance_is_a_real_process_answering_at_its_own_address(instance, settings):
    port = instance_port(instance)
    low, high = settings.CELLHUB["LOCAL_PORTS"]
    assert low <= port <= high
    assert instance_address(instance) == f"http://acme.cells.localhost:{port}/"
    answer = _ask(instance)
    assert answer.status_code == 200 and answer.json()["version"] == instance.server_version
    assert "acme" in _ask(instance, "/").text

    status = _compute(instance).status(instance=instance)
    assert (status.exists, status.replicas, status.ready_replicas) == (True, 1, 1)
    assert status.image.endswith(f":{instance.server_version}") and status.detail == "process RUNNING"
    info = Supervisor.default().info(_compute(instance).namespace(instance))
    assert info["statename"] == "RUNNING" and info["pid"] > 0

    # The process holds what its deployment gives it, and no secret of the hub.
    environment = dict(
        item.split("=", 1) for item in open(f"/proc/{info['pid']}/environ").read().split("\0") if "=" in item
    )
    assert environment["DATABASE_URL"].startswith("sqlite:///") and environment["PORT"] == str(port)
    assert os.path.isdir(environment["SHARE_PATH"])
    assert not {"SECRET_KEY", "CELLHUB_BACKUP_KEY", "DATABASE_URL_HUB"} & (set(environment) - {"DATABASE_URL"})
    assert "CELLHUB_BACKUP_KEY" not in environment and "DJANGO_SETTINGS_MODULE" not in environment

    # Its memory is enforced as an address-space limit (RLIMIT_AS).
    limits = open(f"/proc/{info['pid']}/limits").read()
    line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    assert line.split()[3] == str(instance.memory_mib * 1024 * 1024)

    # The zone file publishes the address: an A record at the loopback and an SRV record with the port.
    dns = drivers.for_dns(instance.region)
    assert dns.lookup(name="acme") == "127.0.0.1"
    assert dns.lookup_address(name="acme") == instance_address(instance)


def test_scale_set_image_and_delete_act_on_the_process(instance):
    compute, port = _compute(instance), instance_port(instance)
    compute.scale(instance=instance, replicas=0)
    status = compute.status(instance=instance)
    assert (status.replicas, status.ready_replicas) == (0, 0) and "STOPPED" in status.detail
    assert not _answers(port)

    compute.scale(instance=instance, replicas=1)
    assert compute.status(instance=instance).ready_replicas == 1 and _ask(instance).status_code == 200

    compute.set_image(instance=instance, image="ghcr.io/cellhub/server:2026.5.0")
    assert _ask(instance).json()["version"] == "2026.5.0"  # the process itself runs the new version
    assert compute.status(instance=instance).image == "ghcr.io/cellhub/server:2026.5.0"

    compute.delete(instance=instance)
    assert not compute.status(instance=instance).exists and not _answers(port)
    assert Supervisor.default().info(compute.namespace(instance)) is None
    compute.delete(instance=instance)  # idempotent


def test_a_release_marked_to_fail_health_runs_a_server_that_fails_its_check(instance):
    Release.objects.create(version="2026.6.0", image="ghcr.io/cellhub/server", fails_health=True)
    _compute(instance).set_image(instance=instance, image="ghcr.io/cellhub/server:2026.6.0")
    answer = _ask(instance)
    assert answer.status_code == 503 and "canary-halt rehearsal" in answer.json()["reason"]


def test_status_reports_a_killed_process(instance):
    os.kill(_pid(instance), signal.SIGKILL)
    compute = _compute(instance)
    status = wait_for(lambda: (s := compute.status(instance=instance)).ready_replicas == 0 and s, timeout=10,
                      message="supervisord to see the process die")
    assert status.exists and status.replicas == 1 and "EXITED" in status.detail


def test_a_killed_process_is_restarted_by_the_health_pass_then_flagged_beyond_the_attempts(instance, settings):
    settings.CELLHUB = {**settings.CELLHUB, "HEALTH_RESTART_ATTEMPTS": 2, "HEALTH_RESTART_BACKOFF_SECONDS": 0}
    instance.refresh_from_db()
    assert health_check_pass()["healthy"] == 1

    for attempt in (1, 2):
        killed = _pid(instance)
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: _compute(instance).status(instance=instance).ready_replicas == 0, timeout=10)
        counts = health_check_pass()
        assert counts == {"unhealthy": 1, "restarted": 1, "pruned": 0}, counts
        check = HealthCheck.objects.latest("id")
        assert f"restarted ({attempt} of 2)" in check.detail and "EXITED" in check.detail
        assert _pid(instance) != killed and _ask(instance).status_code == 200  # a new process answers

    os.kill(_pid(instance), signal.SIGKILL)
    wait_for(lambda: _compute(instance).status(instance=instance).ready_replicas == 0, timeout=10)
    assert health_check_pass() == {"unhealthy": 1, "flagged": 1, "pruned": 0}
    assert InstanceHealth.objects.get(instance=instance).flagged_at is not None
    assert HealthCheck.objects.latest("id").action == HealthAction.FLAGGED
    assert not _answers(instance_port(instance))  # flagged: no further restart until staff clear the flag


def test_the_health_pass_asks_the_instance_itself(instance):
    """The process runs but its database went away: supervisord says RUNNING, the instance's own check says 503."""
    database = drivers.for_pool(instance.database_pool)
    path = database._file(instance)
    path.rename(path.with_suffix(".away"))
    health_check_pass()
    check = HealthCheck.objects.latest("id")
    assert check.status == "unhealthy" and "answered 503: its database file does not exist" in check.detail
    assert check.details["http_status"] == 503


def test_ports_are_unique_and_skip_ports_in_use(db, settings):
    first, last = settings.CELLHUB["LOCAL_PORTS"]
    low = next(p for p in range(first, last - 2) if all(port_is_free(p + n) for n in range(3)))  # the machine is shared
    settings.CELLHUB = {**settings.CELLHUB, "LOCAL_PORTS": (low, low + 2)}
    with socket.socket() as squatter:  # something else listens on the first port
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", low))
        squatter.listen()
        first, second = make_instance(), make_instance()
        assert instance_port_allocate(instance=first) == low + 1
        assert instance_port_allocate(instance=first) == low + 1  # idempotent
        assert instance_port_allocate(instance=second) == low + 2
        with pytest.raises(Exception, match="no free port left"):
            instance_port_allocate(instance=make_instance())
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        InstancePort.objects.create(instance=make_instance(), port=low + 1)


def test_supervisord_runs_apart_and_a_second_start_finds_it(instance):
    supervisor = Supervisor.default()
    pid = supervisor.pid()
    assert os.getsid(pid) != os.getsid(os.getpid())  # its own session: the hub's processes can stop without it
    supervisor.ensure_running()
    assert supervisor.pid() == pid
    config = supervisor.program_file(_compute(instance).namespace(instance))
    assert oct(config.stat().st_mode & 0o777) == "0o600"  # it carries the database URL, as a Secret would
    spec = json.loads(_compute(instance).spec_path(instance).read_text())
    assert spec["port"] == instance_port(instance)
    assert instance.state == InstanceState.RUNNING
    time.sleep(0)
