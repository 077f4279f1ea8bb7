"""The health pass at fleet scale: one list call per compute pool (counted at the wire: the kubernetes client against
``FakeKubeApi`` on 127.0.0.1, supervisord's XML-RPC protocol on its unix socket), the HTTP checks concurrent but
never more than ``HEALTH_HTTP_CONCURRENCY`` at once (a local server records how many it answers at the same time),
a statement count that does not grow with the instances, and a history that records changes, not checks."""
from __future__ import annotations

import dataclasses
import json
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

import pytest
import yaml
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from cells.audit import AuditEvent
from cells.choices import InstanceState, OperationKind, PoolKind
from cells.models import Instance, Operation
from provisioning import drivers
from provisioning.drivers import kubernetes as kubernetes_driver
from provisioning.drivers.base import DeploymentSpec
from provisioning.drivers.local_supervisor import Supervisor
from provisioning.health import health_check_pass
from provisioning.models import HealthAction, HealthCheck, HealthStatus, InstanceHealth
from tests.factories import make_instance, make_pool, make_reef, make_region, make_user
from tests.provisioning import test_firewall as firewall
from tests.provisioning.drivers.test_kubernetes import FakeKubeApi
from tests.provisioning.test_backups import signup

pytestmark = pytest.mark.django_db
backup_key, run, kube, kube_cell = firewall.backup_key, firewall.run, firewall.kube, firewall.kube_cell  # fixtures
VERSION = "2026.4.1"


class PagedKubeApi(FakeKubeApi):
    """``FakeKubeApi`` that pages its lists as the API server does: ``limit`` items, then a ``continue`` token."""

    def answer(self, method, path, query, body):
        status, answer, headers = super().answer(method, path, query, body)
        if method == "GET" and status == 200 and answer.get("kind") == "List" and "limit" in query:
            limit, start = int(query["limit"][0]), int(query.get("continue", ["0"])[0])
            items = answer["items"]
            answer = {**answer, "items": items[start:start + limit], "metadata": {}}
            if start + limit < len(items):
                answer["metadata"]["continue"] = str(start + limit)
        return status, answer, headers

    def deployment_lists(self):
        return [r for r in self.requests if r["method"] == "GET" and r["path"].endswith("/deployments")]


@pytest.fixture
def kube_servers():
    servers = []

    def start():
        servers.append(PagedKubeApi().start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _kube_pool(tmp_path, server, **config):
    path = tmp_path / f"kubeconfig-{server.server.server_address[1]}"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server.host}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
    }))
    reef = make_reef(make_region(cloud="azure", location="westus2"))
    return make_pool(reef, PoolKind.COMPUTE, provider="kubernetes", capacity=1000,
                     config={"kubeconfig": str(path), "context": "test", "firewall_address": "egress", **config})


def _deploy(server, pool, instance, *, ready=1, version=VERSION):
    """The instance's deployment as the cluster holds it (with the status its controller reports)."""
    namespace = drivers.for_pool(pool).namespace(instance)
    labels = {"cellhub.io/instance": instance.name, "app.kubernetes.io/managed-by": "cellhub"}
    server.objects[("deployments", namespace, instance.name)] = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": instance.name, "namespace": namespace, "labels": labels},
        "spec": {"replicas": 1, "template": {"metadata": {"labels": labels}, "spec": {
            "containers": [{"name": "server", "image": f"ghcr.io/cellhub/server:{version}"}]}}},
        "status": {"replicas": 1, "readyReplicas": ready},
    }


def _fleet(tmp_path, server, count, **config):
    pool = _kube_pool(tmp_path, server, **config)
    owner = make_user()
    instances = [make_instance(owner=owner, reef=pool.reef, compute_pool=pool, state=InstanceState.RUNNING,
                               hostname=f"h{n}-{pool.pk}.cells.example.com") for n in range(count)]
    for instance in instances:
        _deploy(server, pool, instance)
    return pool, instances


def _statements(work):
    with CaptureQueriesContext(connection) as queries:
        result = work()
    return len(queries), result


def test_statements_of_a_pass_do_not_grow_with_the_instances(tmp_path, kube_servers):
    """The first pass (each instance a change: unknown → healthy) and a steady one (nothing changed) over 10
    healthy instances, then over 100 in the same pool: the counts differ by a small constant, not by one statement
    (or more) per instance."""
    server = kube_servers()
    pool, instances = _fleet(tmp_path, server, 10)
    first_10, counts = _statements(health_check_pass)
    assert counts == {"healthy": 10, "pruned": 0}
    steady_10, _ = _statements(health_check_pass)

    owner = instances[0].owner
    for n in range(90):
        instance = make_instance(owner=owner, reef=pool.reef, compute_pool=pool, state=InstanceState.RUNNING,
                                 hostname=f"more{n}.cells.example.com")
        _deploy(server, pool, instance)
    mixed_100, counts = _statements(health_check_pass)  # 10 unchanged, 90 checked for the first time
    assert counts == {"healthy": 100, "pruned": 0}
    steady_100, _ = _statements(health_check_pass)
    assert steady_100 - steady_10 <= 1, (steady_10, steady_100)
    assert mixed_100 - first_10 <= 2, (first_10, mixed_100)
    assert steady_100 <= 8  # pools, the pool's instances, claim, one write, prune (and a savepoint pair)


def test_one_list_call_per_compute_pool_and_paged_when_large(tmp_path, kube_servers, monkeypatch):
    monkeypatch.setattr(kubernetes_driver, "LIST_PAGE", 4)  # pages of 4: 10 deployments take 3 calls
    servers = [kube_servers() for _ in range(3)]
    fleets = [_fleet(tmp_path, server, count) for server, count in zip(servers, (3, 4, 10), strict=True)]
    assert health_check_pass() == {"healthy": 17, "pruned": 0}

    for server in servers[:2]:
        (listing,) = server.requests  # nothing but the one list call
        assert listing["path"] == "/apis/apps/v1/deployments"
        assert listing["query"]["labelSelector"] == ["app.kubernetes.io/managed-by=cellhub"]
        assert listing["query"]["limit"] == ["4"]
    pages = servers[2].requests
    assert [r["path"] for r in pages] == ["/apis/apps/v1/deployments"] * 3
    assert [r["query"].get("continue") for r in pages] == [None, ["4"], ["8"]]
    for _pool, instances in fleets:
        assert set(InstanceHealth.objects.filter(instance__in=instances).values_list("status", flat=True)) == {
            HealthStatus.HEALTHY}


class _FakeSupervisord:
    """supervisord's XML-RPC protocol on the unix socket the driver talks to, answering from a table of processes
    and recording each call by method name."""

    def __init__(self, path: str, processes: dict[str, str]):
        self.calls: list[str] = []
        self.processes = processes

        class Handler(SimpleXMLRPCRequestHandler):
            disable_nagle_algorithm = False  # a TCP option; this is a unix socket

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer, SimpleXMLRPCDispatcher):
            daemon_threads = True
            logRequests = False

            def __init__(server, address):
                SimpleXMLRPCDispatcher.__init__(server, allow_none=True, encoding=None)
                socketserver.UnixStreamServer.__init__(server, address, Handler)

        self.server = Server(path)
        self.server.register_function(self._recorded("getState", lambda: {"statename": "RUNNING", "statecode": 1}),
                                      "supervisor.getState")
        self.server.register_function(self._recorded("getAllProcessInfo", self._all), "supervisor.getAllProcessInfo")
        self.server.register_function(self._recorded("getProcessInfo", lambda name: self._info(name)),
                                      "supervisor.getProcessInfo")
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _recorded(self, name, function):
        def call(*args):
            self.calls.append(name)
            return function(*args)
        return call

    def _info(self, name):
        return {"name": name, "group": name, "statename": self.processes[name], "pid": 4242, "exitstatus": 0,
                "spawnerr": ""}

    def _all(self):
        return [self._info(name) for name in self.processes]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_local_pools_ask_supervisord_once_each(tmp_path, settings):
    """Two local compute pools: one ``getAllProcessInfo`` each, no ``getProcessInfo`` per instance; a process that
    is not RUNNING makes its instance unhealthy (flagged at once: no restarts allowed here)."""
    settings.CELLHUB = {**settings.CELLHUB, "VAR_DIR": str(tmp_path / "var"), "HEALTH_RESTART_ATTEMPTS": 0}
    reef = make_reef()
    pools = [make_pool(reef, PoolKind.COMPUTE) for _ in range(2)]
    processes, instances = {}, []
    for n in range(5):
        pool = pools[n % 2]
        instance = make_instance(reef=reef, compute_pool=pool, state=InstanceState.RUNNING)
        driver = drivers.for_pool(pool)
        spec = DeploymentSpec(name=instance.name, namespace=driver.namespace(instance), image="ghcr.io/cellhub/server",
                              version=VERSION, cpu_millicores=500, memory_mib=512, hostname="", database_url="",
                              share_endpoint="", share_name="", port=None)
        driver.spec_path(instance).parent.mkdir(parents=True, exist_ok=True)
        driver.spec_path(instance).write_text(json.dumps(dataclasses.asdict(spec)))
        processes[spec.namespace] = "EXITED" if n == 4 else "RUNNING"
        instances.append(instance)
    supervisor = Supervisor.default()
    supervisor.root.mkdir(parents=True, exist_ok=True)
    fake = _FakeSupervisord(supervisor.socket_path, processes)
    try:
        counts = health_check_pass()
    finally:
        fake.stop()
    assert counts == {"healthy": 4, "unhealthy": 1, "flagged": 1, "pruned": 0}
    assert fake.calls.count("getAllProcessInfo") == 2 and "getProcessInfo" not in fake.calls
    broken = InstanceHealth.objects.get(instance=instances[4])
    assert broken.flagged_at is not None and "process EXITED" in broken.detail


class _SlowHealth(BaseHTTPRequestHandler):
    """Answers every health check after a pause, counting how many it is answering at once and on how many
    connections (HTTP/1.1 keep-alive: a client that reuses connections opens few)."""

    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    in_flight = 0
    most = 0
    answered = 0
    connections: set = set()

    def do_GET(self):  # noqa: N802 (the standard library's name)
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.most = max(cls.most, cls.in_flight)
            cls.connections.add(self.client_address)
        time.sleep(0.03)
        body = json.dumps({"status": "ok", "version": VERSION}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with cls.lock:
            cls.in_flight -= 1
            cls.answered += 1

    def log_message(self, *args):
        pass


def test_http_checks_run_concurrently_never_beyond_the_bound(tmp_path, kube_servers, settings):
    settings.CELLHUB = {**settings.CELLHUB, "HEALTH_HTTP": True, "HEALTH_HTTP_CONCURRENCY": 4}
    http = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHealth)
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, daemon=True).start()
    _SlowHealth.in_flight = _SlowHealth.most = _SlowHealth.answered = 0
    _SlowHealth.connections = set()
    try:
        _fleet(tmp_path, kube_servers(), 40,
               health_url=f"http://127.0.0.1:{http.server_port}/{{hostname}}/api/health")
        assert health_check_pass() == {"healthy": 40, "pruned": 0}
    finally:
        http.shutdown()
        http.server_close()
    assert _SlowHealth.answered == 40
    assert 1 < _SlowHealth.most <= 4, _SlowHealth.most
    assert len(_SlowHealth.connections) <= 4  # connections reused, one per worker at most


def test_history_keeps_changes_not_checks(tmp_path, kube_servers):
    """A healthy, unchanged pass adds no row; a pool that stops answering is one change (unknown) for each of its
    instances, asked nothing more; answering again is another change; every check updates ``checked_at``."""
    server = kube_servers()
    pool, instances = _fleet(tmp_path, server, 3)
    start = timezone.now()
    health_check_pass(now=start)
    assert HealthCheck.objects.count() == 3  # first checks: unknown → healthy, a change each
    first = HealthCheck.objects.get(instance=instances[0])
    assert (first.status, first.action, first.detail, first.checked_at) == (
        HealthStatus.HEALTHY, HealthAction.NONE, "1 of 1 replicas ready", start)
    assert first.details == {"exists": True, "replicas": 1, "ready_replicas": 1,
                             "image": f"ghcr.io/cellhub/server:{VERSION}"}
    health_check_pass(now=start + timezone.timedelta(minutes=5))
    assert HealthCheck.objects.count() == 3
    later = start + timezone.timedelta(minutes=5)
    assert set(InstanceHealth.objects.values_list("checked_at", "since")) == {(later, start)}

    server.stop()  # the cluster stops answering
    requests_before = len(server.requests)
    assert health_check_pass(now=start + timezone.timedelta(minutes=10)) == {"unknown": 3, "pruned": 0}
    assert len(server.requests) == requests_before
    assert HealthCheck.objects.filter(status=HealthStatus.UNKNOWN).count() == 3
    health_check_pass(now=start + timezone.timedelta(minutes=15))
    assert HealthCheck.objects.count() == 6  # unknown again: no change

    revived = kube_servers()
    revived.objects = server.objects
    config = {**pool.config, "kubeconfig": _kube_pool(tmp_path, revived).config["kubeconfig"]}
    pool.config = config
    pool.save(update_fields=["config"])
    assert health_check_pass(now=start + timezone.timedelta(minutes=20)) == {"healthy": 3, "pruned": 0}
    assert HealthCheck.objects.count() == 9
    assert set(InstanceHealth.objects.values_list("since", flat=True)) == {start + timezone.timedelta(minutes=20)}


def test_an_unhealthy_instance_is_flagged_alone_and_its_waits_are_one_change(tmp_path, kube_servers, settings):
    """Among healthy instances one is not ready: with one restart allowed the pass restarts it (through the driver:
    a scale to 0 and the deployment applied again, which needs its database and share — absent here, so the restart
    fails and is recorded), waits (one row, however many checks wait), then flags it and mails staff."""
    settings.CELLHUB = {**settings.CELLHUB, "HEALTH_RESTART_ATTEMPTS": 1, "HEALTH_RESTART_BACKOFF_SECONDS": 60}
    staff = make_user(is_staff=True, email="oncall@example.com")
    server = kube_servers()
    pool, instances = _fleet(tmp_path, server, 4)
    _deploy(server, pool, instances[0], ready=0)
    start = timezone.now()
    actions = []
    for seconds in (0, 20, 40, 61):
        counts = health_check_pass(now=start + timezone.timedelta(seconds=seconds))
        assert counts["healthy"] == 3 and counts["unhealthy"] == 1
        actions.append(InstanceHealth.objects.get(instance=instances[0]).action)
    assert actions == [HealthAction.RESTART_FAILED, HealthAction.WAITING, HealthAction.WAITING,
                       HealthAction.FLAGGED]
    history = list(HealthCheck.objects.filter(instance=instances[0]).order_by("checked_at")
                   .values_list("action", flat=True))
    assert history == [HealthAction.RESTART_FAILED, HealthAction.WAITING, HealthAction.FLAGGED]
    assert HealthCheck.objects.exclude(instance=instances[0]).count() == 3  # the healthy: their first check only
    assert AuditEvent.objects.filter(action="instance.restart", outcome="failed").count() == 1
    assert AuditEvent.objects.filter(action="instance.flag", target_id=str(instances[0].pk)).count() == 1
    (message,) = [m for m in mail.outbox if "flagged" in m.subject]
    assert message.to == [staff.email]


def test_the_pass_skips_busy_instances_and_those_another_check_holds(tmp_path, kube_servers):
    server = kube_servers()
    pool, instances = _fleet(tmp_path, server, 3)
    Operation.objects.create(kind=OperationKind.BACKUP, instance=instances[0])
    InstanceHealth.objects.create(instance=instances[1], checking_since=timezone.now())
    assert health_check_pass() == {"healthy": 1, "pruned": 0}
    assert not HealthCheck.objects.filter(instance__in=instances[:2]).exists()
    assert InstanceHealth.objects.get(instance=instances[1]).checking_since is not None  # still the other's
    assert InstanceHealth.objects.get(instance=instances[2]).checking_since is None  # released


def test_the_pass_moves_a_share_firewall_after_its_instance_from_one_pods_list(run, kube, kube_cell):
    """A signed-up instance on a cluster (AWS: its share admits the node's address); its pod is rescheduled on
    another node. The pass lists the pool's deployments once and its pods once, and moves the share's firewall."""
    instance = signup(run, kube_cell)
    assert Instance.objects.get(pk=instance.pk).share.firewall_address == "10.0.1.17"
    namespace = drivers.for_pool(kube_cell["compute"]).namespace(instance)
    deployment = next(obj for (kind, ns, _), obj in kube.objects.items() if kind == "deployments" and ns == namespace)
    deployment["status"] = {"replicas": 1, "readyReplicas": 1}  # what the cluster's controller reports
    pod = next(obj for (kind, ns, _), obj in kube.objects.items() if kind == "pods" and ns == namespace)
    pod["status"]["hostIP"] = "10.0.3.4"  # rescheduled on another node
    before = len(kube.requests)

    assert health_check_pass() == {"healthy": 1, "firewall_updated": 1, "pruned": 0}
    gets = [r["path"] for r in kube.requests[before:] if r["method"] == "GET"]
    # The pool's lists, then the moved instance's own pods, read again by the follow that changes its firewall.
    assert gets == ["/apis/apps/v1/deployments", "/api/v1/pods", f"/api/v1/namespaces/{namespace}/pods"]
    assert Instance.objects.get(pk=instance.pk).share.firewall_address == "10.0.3.4"
    event = AuditEvent.objects.filter(action="share.firewall").order_by("-pk").first()
    assert event.details == {"instance": instance.pk, "previous": "10.0.1.17", "address": "10.0.3.4"}

    before = len(kube.requests)
    assert health_check_pass() == {"healthy": 1, "pruned": 0}  # where it was: nothing to move
    assert [r["path"] for r in kube.requests[before:]] == ["/apis/apps/v1/deployments", "/api/v1/pods"]
