"""The kubernetes driver, driving the real kubernetes client against a small API server on 127.0.0.1.

The server (``FakeKubeApi``) keeps objects in memory, answers 409 to a create of an existing object,
merges PATCH bodies (lists of named items merged by name, as strategic merge does for containers),
serves the scale subresource, lists with label selectors, deletes namespaces with their contents, and
can be told to answer 429 a number of times first. It records every request it receives.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client as k8s

from cells.choices import PoolKind
from provisioning.drivers.base import DeploymentSpec, PermanentDriverError, TransientDriverError
from provisioning.drivers.kubernetes import KubernetesComputeDriver
from tests.factories import make_instance, make_pool, make_reef, make_region

COLLECTION = re.compile(
    r"^/(?:api/v1|apis/apps/v1|apis/networking\.k8s\.io/v1)"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<resource>namespaces|secrets|services|deployments|ingresses|pods)"
    r"(?:/(?P<name>[^/]+))?(?P<sub>/scale)?$"
)
NAMESPACE_ITEM = re.compile(r"^/api/v1/namespaces/(?P<name>[^/]+)$")


def _merge(target, patch):
    for key, value in patch.items():
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value)
        elif (
            isinstance(value, list)
            and isinstance(current, list)
            and all(isinstance(item, dict) and "name" in item for item in value + current)
        ):
            by_name = {item["name"]: item for item in current}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item)
                else:
                    current.append(item)
        else:
            target[key] = value


class FakeKubeApi:
    def __init__(self):
        self.objects: dict[tuple[str, str | None, str], dict] = {}  # (resource, namespace, name) → object
        self.requests: list[dict] = []
        self.throttle: dict[tuple[str, str], int] = {}  # (method, resource) → 429s still to answer
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length)) if length else None

            def _send(self, status, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                url = urlparse(self.path)
                body = self._body()
                with api.lock:
                    api.requests.append(
                        {
                            "method": self.command,
                            "path": url.path,
                            "query": parse_qs(url.query),
                            "body": body,
                            "content_type": self.headers.get("Content-Type"),
                            "authorization": self.headers.get("Authorization"),
                        }
                    )
                    status, answer, headers = api.answer(self.command, url.path, parse_qs(url.query), body)
                    api.schedule(self.command, url.path, status, answer)
                self._send(status, answer, headers)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _status(code, reason):
        return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}

    def answer(self, method, path, query, body):
        match = COLLECTION.match(path)
        if not match:
            return 404, self._status(404, "NotFound"), None
        resource, namespace, name = match["resource"], match["namespace"], match["name"]
        if resource == "namespaces" and name is None and namespace is not None:
            resource, name, namespace = "namespaces", namespace, None
        remaining = self.throttle.get((method, resource), 0)
        if remaining:
            self.throttle[(method, resource)] = remaining - 1
            return 429, self._status(429, "TooManyRequests"), {"Retry-After": "0"}
        key = (resource, namespace, name)
        if method == "POST":
            key = (resource, namespace, body["metadata"]["name"])
            if key in self.objects:
                return 409, self._status(409, "AlreadyExists"), None
            stored = json.loads(json.dumps(body))
            stored["metadata"]["uid"] = f"uid-{len(self.objects)}"
            self.objects[key] = stored
            return 201, stored, None
        if method == "GET" and name is None:
            selector = dict(s.split("=", 1) for s in query.get("labelSelector", [""])[0].split(",") if s)
            items = [
                obj
                for (kind, ns, _), obj in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
                if kind == resource
                and (namespace is None or ns == namespace)
                and all(obj["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
            ]
            return 200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}, None
        if key not in self.objects:
            return 404, self._status(404, "NotFound"), None
        obj = self.objects[key]
        if method == "GET":
            return 200, obj, None
        if method == "PATCH" and match["sub"]:
            obj["spec"]["replicas"] = body["spec"]["replicas"]
            scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": obj["metadata"],
                     "spec": {"replicas": obj["spec"]["replicas"]}}
            return 200, scale, None
        if method == "PATCH":
            _merge(obj, body)
            return 200, obj, None
        if method == "DELETE":
            del self.objects[key]
            if resource == "namespaces":
                for other in [k for k in self.objects if k[1] == name]:
                    del self.objects[other]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, None
        return 405, self._status(405, "MethodNotAllowed"), None

    node = "10.0.1.17"  # where the scheduler puts pods
    pod_address = "192.168.7.3"

    def schedule(self, method, path, status, answer):
        """The scheduler: a deployment created or scaled up gets one pod (a new one: maybe on another node, as a
        restart does), with its node's and its own address."""
        if status not in (200, 201) or "/deployments" not in path or method not in ("POST", "PATCH"):
            return
        metadata = answer.get("metadata", {})
        deployment = self.objects.get(("deployments", metadata.get("namespace"), metadata.get("name")))
        if not deployment or not deployment["spec"].get("replicas", 1):
            return
        namespace, name = metadata["namespace"], metadata["name"]
        for key in [k for k in self.objects if k[0] == "pods" and k[1] == namespace]:
            del self.objects[key]
        pod = f"{name}-{len(self.requests)}"
        self.objects[("pods", namespace, pod)] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": namespace, "creationTimestamp": "2026-01-01T00:00:00Z",
                         "labels": deployment["spec"]["template"]["metadata"]["labels"]},
            "status": {"phase": "Running", "hostIP": self.node, "podIP": self.pod_address},
        }

    def posts(self, resource):
        return [r for r in self.requests if r["method"] == "POST" and r["path"].endswith("/" + resource)]

    def count(self, resource):
        return sum(1 for key in self.objects if key[0] == resource)


@pytest.fixture(autouse=True)
def _no_backoff(settings):
    settings.CELLHUB = {**settings.CELLHUB, "CLOUD_BACKOFF": 0}


@pytest.fixture
def kube():
    server = FakeKubeApi().start()
    yield server
    server.stop()


@pytest.fixture
def driver(db, kube):
    region = make_region(cloud="azure", location="westus2")
    pool = make_pool(make_reef(region), PoolKind.COMPUTE, provider="kubernetes", config={"context": "test"})
    configuration = k8s.Configuration()
    configuration.host = kube.host
    return KubernetesComputeDriver(pool, api_client=k8s.ApiClient(configuration))


def _spec(driver, instance, **overrides) -> DeploymentSpec:
    fields = {
        "name": f"server-{instance.pk}",
        "namespace": driver.namespace(instance),
        "image": "ghcr.io/cellhub/server",
        "version": "2026.4.1",
        "cpu_millicores": 750,
        "memory_mib": 1536,
        "hostname": f"{instance.name}.cells.example.com",
        "database_url": "postgresql://login:secret@db.example.com:5432/cellhub_i1",
        "share_endpoint": "nfs://10.0.0.5/bucket-s01",
        "share_name": "bucket-s01",
    }
    fields.update(overrides)
    return DeploymentSpec(**fields)


def test_deploy_sends_the_rendered_manifests(driver, kube):
    instance = make_instance()
    spec = _spec(driver, instance)
    driver.deploy(spec=spec)

    namespace = driver.namespace(instance)
    assert [r["path"] for r in kube.requests if r["method"] == "POST"] == [
        "/api/v1/namespaces",
        f"/api/v1/namespaces/{namespace}/secrets",
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        f"/api/v1/namespaces/{namespace}/services",
        f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses",
    ]
    secret = kube.posts("secrets")[0]["body"]
    assert secret["stringData"] == {"DATABASE_URL": spec.database_url}

    deployment = kube.posts("deployments")[0]["body"]
    assert deployment["metadata"]["labels"] == {
        "cellhub.io/instance": spec.name,
        "app.kubernetes.io/managed-by": "cellhub",
    }
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/cellhub/server:2026.4.1"
    assert container["resources"]["limits"] == {"cpu": "750m", "memory": "1536Mi"}
    assert container["resources"]["requests"] == {"cpu": "750m", "memory": "1536Mi"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/api/health", "port": 8080}
    assert container["readinessProbe"]["initialDelaySeconds"] == 10
    assert container["volumeMounts"] == [{"name": "share", "mountPath": "/data"}]
    assert pod["volumes"] == [{"name": "share", "nfs": {"server": "10.0.0.5", "path": "/bucket-s01"}}]
    assert {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": f"{spec.name}-database",
                                                                    "key": "DATABASE_URL"}}} in container["env"]

    ingress = kube.posts("ingresses")[0]["body"]
    assert ingress["spec"]["rules"][0]["host"] == spec.hostname


def test_a_second_deploy_patches_and_creates_no_duplicate(driver, kube):
    instance = make_instance()
    driver.deploy(spec=_spec(driver, instance))
    driver.deploy(spec=_spec(driver, instance, version="2026.5.0"))

    for resource in ("namespaces", "secrets", "deployments", "services", "ingresses"):
        assert kube.count(resource) == 1, resource
    patches = [r for r in kube.requests if r["method"] == "PATCH"]
    assert len(patches) == 5
    assert {p["content_type"] for p in patches} == {"application/strategic-merge-patch+json"}
    deployment = kube.objects[("deployments", driver.namespace(instance), f"server-{instance.pk}")]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/cellhub/server:2026.5.0"


def test_status_upgrade_stop_and_delete(driver, kube):
    instance = make_instance()
    assert driver.status(instance=instance).exists is False
    driver.deploy(spec=_spec(driver, instance))
    key = ("deployments", driver.namespace(instance), f"server-{instance.pk}")
    kube.objects[key]["status"] = {"replicas": 1, "readyReplicas": 1}

    status = driver.status(instance=instance)
    assert (status.exists, status.replicas, status.ready_replicas) == (True, 1, 1)
    assert status.image == "ghcr.io/cellhub/server:2026.4.1"

    driver.set_image(instance=instance, image="ghcr.io/cellhub/server:2026.6.0")
    patch = [r for r in kube.requests if r["method"] == "PATCH"][-1]
    assert patch["body"] == {
        "spec": {"template": {"spec": {"containers": [{"name": "server", "image": "ghcr.io/cellhub/server:2026.6.0"}]}}}
    }
    assert driver.status(instance=instance).image == "ghcr.io/cellhub/server:2026.6.0"

    driver.scale(instance=instance, replicas=0)
    assert kube.requests[-1]["path"].endswith(f"/deployments/server-{instance.pk}/scale")
    assert driver.status(instance=instance).replicas == 0
    assert driver.list_deployments() == [driver.namespace(instance)]

    driver.delete(instance=instance)
    assert kube.count("deployments") == 0 and kube.count("namespaces") == 0
    assert driver.status(instance=instance).exists is False
    driver.delete(instance=instance)  # absent: no error
    assert kube.requests[-1]["method"] == "DELETE"


def test_throttling_is_retried_and_creates_one_deployment(driver, kube):
    instance = make_instance()
    kube.throttle[("POST", "deployments")] = 2
    driver.deploy(spec=_spec(driver, instance))
    assert len(kube.posts("deployments")) == 3
    assert kube.count("deployments") == 1
    assert not [r for r in kube.requests if r["method"] == "PATCH"]


def test_throttling_that_never_ends_is_transient(driver, kube):
    instance = make_instance()
    kube.throttle[("POST", "namespaces")] = 100
    with pytest.raises(TransientDriverError, match="create Namespace"):
        driver.deploy(spec=_spec(driver, instance))
    assert len(kube.posts("namespaces")) == 5


def test_scaling_a_missing_deployment_is_permanent(driver, kube):
    with pytest.raises(PermanentDriverError, match="has no deployment"):
        driver.scale(instance=make_instance(), replicas=1)


def test_missing_kubeconfig_names_what_to_set(db, tmp_path):
    pool = make_pool(kind=PoolKind.COMPUTE, provider="kubernetes", config={"kubeconfig": str(tmp_path / "absent")})
    with pytest.raises(PermanentDriverError, match="Kubernetes config not found.*kubeconfig"):
        KubernetesComputeDriver(pool).status(instance=make_instance())
