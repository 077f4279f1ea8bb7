"""An Azure reef for the plans' end-to-end tests: Azure SQL elastic pool + Azure Files + AKS + Azure DNS.

Azure is ``AzureCloud`` behind the SDKs' own default transport (every azure-mgmt and storage client the drivers
build uses it), Kubernetes is ``AksCluster`` (``FakeKubeApi`` with a kubelet) on 127.0.0.1 reached through a
kubeconfig, and python-tds' ``connect`` records the T-SQL. Nothing of ours is replaced: the tests drive the hub's
services as a signup, staff or the scheduler do.
"""
from __future__ import annotations

import azure.core.pipeline.transport._requests_basic as azure_requests_transport
import azure.identity
import azure.storage.blob._shared.base_client as blob_base
import azure.storage.fileshare._shared.base_client as fileshare_base
import pytds
import pytest

from cells.choices import PoolKind, Provider
from cells.models import Instance
from provisioning import drivers
from provisioning.drivers.base import resource_name
from tests.factories import make_pool, make_reef, make_region
from tests.provisioning.drivers.azure_cloud import AzureCloud
from tests.provisioning.drivers.azure_transport import FakeCredential
from tests.provisioning.drivers.test_azure import RecordingTds
from tests.provisioning.drivers.test_kubernetes import COLLECTION, FakeKubeApi

SUB = "00000000-0000-0000-0000-000000000001"
EGRESS = "20.51.7.9"
INGRESS = "20.51.7.100"
HUB = "203.0.113.10"
DOMAIN = "cells.example.com"
SERVER = f"/subscriptions/{SUB}/resourceGroups/rg-cells/providers/Microsoft.Sql/servers/sql-west-1"
ACCOUNT = f"/subscriptions/{SUB}/resourceGroups/rg-cells/providers/Microsoft.Storage/storageAccounts/cellswest1"
ZONE = f"/subscriptions/{SUB}/resourceGroups/rg-dns/providers/Microsoft.Network/dnsZones/{DOMAIN}"
# The api-versions the SDKs in requirements.txt speak (a test fails when an upgrade changes what goes on the wire).
SQL_API, STORAGE_API, DNS_API, MONITOR_API = "2025-01-01", "2026-09-01", "2018-05-01", "2018-03-01"


class AksCluster(FakeKubeApi):
    """``FakeKubeApi`` with a kubelet and a way to fail.

    A deployment created, patched or scaled up is rolled out: its status says ``replicas`` with none ready, and
    ``ready_after`` reads of its status later its pod is ready, unless its namespace is in ``crashing`` (its pod
    never gets ready, as a server that crashes at start). Scaled to 0, its pods go. ``refuse[(method, resource)] =
    [status, times]`` answers the next ``times`` such requests with ``status`` (500: the API server failing, 403:
    forbidden by RBAC)."""

    ready_after = 1

    def __init__(self):
        super().__init__()
        self.crashing: set[str] = set()
        self.refuse: dict[tuple[str, str], list] = {}
        self._rolling: dict[tuple[str, str], int] = {}

    def answer(self, method, path, query, body):
        match = COLLECTION.match(path)
        if match:
            resource = match["resource"]
            refused = self.refuse.get((method, resource))
            if refused and refused[1] > 0:
                refused[1] -= 1
                return refused[0], self._status(refused[0], "InternalError" if refused[0] >= 500 else "Forbidden"), {}
            if method == "GET" and resource == "deployments":
                self._kubelet(match["namespace"])
        return super().answer(method, path, query, body)

    def _kubelet(self, namespace):
        for (ns, name), reads in list(self._rolling.items()):
            if namespace not in (None, ns):
                continue
            deployment = self.objects.get(("deployments", ns, name))
            if deployment is None:
                del self._rolling[(ns, name)]
                continue
            if reads > 0 or ns in self.crashing:
                self._rolling[(ns, name)] = max(reads - 1, 0)
                continue
            deployment["status"] = {"replicas": deployment["spec"].get("replicas", 1),
                                    "readyReplicas": deployment["spec"].get("replicas", 1)}
            del self._rolling[(ns, name)]

    def schedule(self, method, path, status, answer):
        super().schedule(method, path, status, answer)
        if status not in (200, 201) or "/deployments" not in path or method not in ("POST", "PATCH"):
            return
        metadata = answer.get("metadata", {})
        key = (metadata.get("namespace"), metadata.get("name"))
        deployment = self.objects.get(("deployments", *key))
        if deployment is None:
            return
        replicas = deployment["spec"].get("replicas", 1)
        deployment["status"] = {"replicas": replicas, "readyReplicas": 0}
        if replicas:
            self._rolling[key] = self.ready_after
        else:
            self._rolling.pop(key, None)
            for pod in [k for k in self.objects if k[0] == "pods" and k[1] == key[0]]:
                del self.objects[pod]

    def namespaced(self, namespace) -> dict:
        return {key: value for key, value in self.objects.items() if key[1] == namespace or key[2] == namespace}


@pytest.fixture
def cloud(monkeypatch, settings):
    cloud = AzureCloud()
    # The SDKs' own default HTTP layer (azure-core's RequestsTransport) answers from ``cloud``.
    for module in (azure_requests_transport, fileshare_base, blob_base):
        monkeypatch.setattr(module, "RequestsTransport", lambda *args, **kwargs: cloud)
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", FakeCredential)
    monkeypatch.setenv("CELLHUB_POOL_SECRET_TEST_SQL_ADMIN", "Admin-Passw0rd!")
    monkeypatch.delenv("CELLHUB_AZURE_DNS_ZONE", raising=False)
    settings.CELLHUB = {**settings.CELLHUB, "CLOUD_BACKOFF": 0, "DNS_PROVIDER": "azure_dns", "HUB_DOMAIN": DOMAIN,
                        "AZURE_SUBSCRIPTION_ID": SUB, "AZURE_DNS_RESOURCE_GROUP": "rg-dns", "STEP_BACKOFF": 0}
    return cloud


@pytest.fixture
def tds(monkeypatch):
    recorder = RecordingTds()
    monkeypatch.setattr(pytds, "connect", recorder.connect)
    return recorder


@pytest.fixture
def kube(tmp_path):
    api = AksCluster().start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: aks\n"
        f"clusters: [{{name: aks, cluster: {{server: '{api.host}'}}}}]\n"
        "contexts: [{name: aks, context: {cluster: aks, user: hub}}]\nusers: [{name: hub, user: {token: t}}]\n"
    )
    api.kubeconfig = str(kubeconfig)
    yield api
    api.stop()


@pytest.fixture
def reef(cloud, kube):
    reef = make_reef(make_region(cloud="azure", location="westus2"), ingress_address=INGRESS)
    sql = {"subscription_id": SUB, "resource_group": "rg-cells", "server": "sql-west-1", "elastic_pool": "ep-1",
           "admin_password_env": "CELLHUB_POOL_SECRET_TEST_SQL_ADMIN", "hub_address": HUB,
           "archive_account": "cellsdeep"}
    files = {"subscription_id": SUB, "resource_group": "rg-cells", "account_name": "cellswest1",
             "hub_address": HUB, "archive_account": "cellsdeep"}
    database = make_pool(reef, PoolKind.DATABASE, provider=Provider.AZURE_SQL, capacity=5, config=sql)
    storage = make_pool(reef, PoolKind.STORAGE, provider=Provider.AZURE_FILES, capacity=3, config=files)
    compute = make_pool(reef, PoolKind.COMPUTE, provider=Provider.KUBERNETES, capacity=5,
                        config={"kubeconfig": kube.kubeconfig, "egress_address": EGRESS})
    drivers.for_pool(database).provision_pool()
    drivers.for_pool(storage).provision_pool()
    for share in storage.shares.all():
        drivers.for_pool(storage).create_share(share=share)
    cloud.requests.clear()
    return {"reef": reef, "database": database, "storage": storage, "compute": compute}


@pytest.fixture
def signup(client, reef, tds, sync_tasks, django_capture_on_commit_callbacks):
    def post(name):
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post("/signup/", {"email": f"{name}@example.com", "password": "a-long-enough-passphrase",
                                                "name": name, "region": reef["reef"].region.pk})
        assert response.status_code == 302, response.content
        return Instance.objects.get(name=name)
    return post


@pytest.fixture
def run(sync_tasks, django_capture_on_commit_callbacks):
    """Call a service that queues work; the operation it returns runs (django-q2 synchronously), then is re-read."""
    def call(service, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            result = service(**kwargs)
        if hasattr(result, "refresh_from_db"):
            result.refresh_from_db()
        return result
    return call


def namespace(instance) -> str:
    """The instance's namespace (named after its id, whichever cluster)."""
    return resource_name("i", instance.pk)


def ip_rules(cloud) -> list[str]:
    """The storage account's allowed addresses, as Azure holds them now."""
    acls = cloud.resources[ACCOUNT.lower()]["properties"]["networkAcls"]
    return [rule["value"] for rule in acls.get("ipRules", [])]
