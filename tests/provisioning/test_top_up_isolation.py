"""Reef isolation on top-up: a pool a top-up orders gets a host of its own, never its template's — driven through the
hub's services (``reef_top_up``, the top-up plan run inline), asserted at the wire.

- AWS: moto (``mock_aws``) plays EKS and STS. Every client the drivers make is watched through botocore's own events
  (``provide-client-params``: what each call asked; ``before-call``: a refusal as EKS answers one;
  ``after-call``: the cloud moving a resource to a failed state). moto gives each new cluster the endpoint of a
  local Kubernetes API (``FakeKubeApi``), one per cluster, so the hub's check that a new cluster answers, and the
  token it signs with, are seen on the cluster's own wire.
- Azure: ``AzureCloud`` behind the SDK's default transport answers the managed cluster PUT as a long-running
  operation and ``listClusterUserCredential`` with a kubeconfig naming a local Kubernetes API.
- PostgreSQL: an external server as the template; the top-up's pool is a managed cluster of its own, a real one.
Nothing of ours is replaced.
"""
from __future__ import annotations

import base64
import copy
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import azure.core.pipeline.transport._requests_basic as azure_requests_transport
import azure.identity
import boto3
import moto.eks.models as moto_eks
import psycopg
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID

from cells.choices import OperationState, PoolKind, PoolStatus, Provider
from cells.models import Operation, Pool
from provisioning import drivers, faults
from provisioning.capacity import reef_capacity, reef_top_up
from provisioning.drivers import kubernetes_clusters, postgres_cluster
from provisioning.drivers.kubernetes_clusters import EksCluster
from tests.factories import POSTGRES_POOL_CONFIG, make_pool, make_reef, make_region
from tests.provisioning.aws_offline import offline_aws
from tests.provisioning.drivers.azure_cloud import AzureCloud
from tests.provisioning.drivers.azure_transport import FakeCredential
from tests.provisioning.drivers.test_kubernetes import FakeKubeApi

pytestmark = pytest.mark.django_db
REGION = "us-east-1"
SUB = "00000000-0000-0000-0000-000000000001"
ONLY = {kind: {"FLOOR": {k: (5 if k == kind else 0) for k in ("database", "storage", "compute")}}
        for kind in ("database", "storage", "compute")}
EKS_SETTINGS = {
    "eks_role_arn": "arn:aws:iam::123456789012:role/cellhub-eks-cluster",
    "node_role_arn": "arn:aws:iam::123456789012:role/cellhub-eks-nodes",
    "subnet_ids": ["subnet-0a1", "subnet-0b2"],
    "security_group_ids": ["sg-0c3"],
    "waiter_delay_seconds": 0,
    "waiter_max_attempts": 3,
}
AKS_SETTINGS = {"subscription_id": SUB, "resource_group": "rg-cells", "node_count": 3,
                "waiter_delay_seconds": 1, "waiter_max_attempts": 15}


# -- local Kubernetes APIs ---------------------------------------------------------------------------------------


@pytest.fixture
def kube_apis():
    """Start local Kubernetes APIs on demand; all stopped at the end."""
    started = []

    def start() -> FakeKubeApi:
        api = FakeKubeApi().start()
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


def kubeconfig_of(api: FakeKubeApi, folder: Path) -> str:
    path = folder / f"kubeconfig-{api.server.server_address[1]}"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: given\n"
        f"clusters: [{{name: given, cluster: {{server: '{api.host}'}}}}]\n"
        "contexts: [{name: given, context: {cluster: given, user: hub}}]\nusers: [{name: hub, user: {token: t}}]\n"
    )
    return str(path)


def api_reads(api: FakeKubeApi) -> list[dict]:
    return [r for r in api.requests if r["path"] == "/api/v1/namespaces" and r["method"] == "GET"]


def top_up(reef, capture) -> Operation:
    """Order the one pool the reef lacks and run its top-up inline; the operation, re-read."""
    with capture(execute=True):
        operations = reef_top_up(reef=reef)
    assert len(operations) == 1, operations
    operations[0].refresh_from_db()
    return operations[0]


# -- AWS: EKS ----------------------------------------------------------------------------------------------------


class _Endpoints(str):
    """moto formats this once per new cluster for its endpoint: each cluster gets the next local API's address."""

    def __new__(cls, servers):
        made = super().__new__(cls, "endpoint")
        made.servers = servers
        return made

    def format(self, **kwargs):
        return self.servers.pop(0).host + "/" if self.servers else "https://nowhere.invalid/"


class EksWire:
    """What the drivers asked of AWS, and the test's say in what AWS answers."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []  # (operation, parameters as the driver passed them)
        self.refuse: dict[str, str] = {}  # operation → error code to answer it with
        self.after: dict[str, object] = {}  # operation → what happens in the cloud once it succeeded
        self.signed: list[dict] = []  # headers of every GetCallerIdentity request signed (presigned tokens)
        self.servers: list[FakeKubeApi] = []

    def attach(self, client) -> None:
        client.meta.events.register("provide-client-params", self._record)
        client.meta.events.register("before-call", self._refuse)
        client.meta.events.register("after-call", self._after)
        client.meta.events.register_last("before-sign.sts.GetCallerIdentity", self._signing)

    def _record(self, params, model, **kwargs):
        self.calls.append((model.name, copy.deepcopy(params)))

    def _refuse(self, model, **kwargs):
        code = self.refuse.get(model.name)
        if code is None:
            return None
        error = {"Error": {"Code": code, "Message": f"{model.name} refused by the test"},
                 "ResponseMetadata": {"HTTPStatusCode": 400}}
        return AWSResponse("https://eks.test", 400, {}, None), error

    def _after(self, model, http_response, parsed, **kwargs):
        if http_response.status_code < 300 and model.name in self.after:
            self.after[model.name](parsed)

    def _signing(self, request, **kwargs):
        self.signed.append(dict(request.headers))

    def called(self, operation: str) -> list[dict]:
        return [params for name, params in self.calls if name == operation]

    @staticmethod
    def backend():
        return moto_eks.eks_backends[DEFAULT_ACCOUNT_ID][REGION]


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    offline_aws(monkeypatch, tmp_path, REGION)


@pytest.fixture
def eks(aws_env, monkeypatch, kube_apis):
    with mock_aws():
        wire = EksWire()
        real_client = boto3.client

        def client(service, *args, **kwargs):
            made = real_client(service, *args, **kwargs)
            wire.attach(made)
            return made

        monkeypatch.setattr(boto3, "client", client)
        monkeypatch.setattr(moto_eks, "ENDPOINT_TEMPLATE", _Endpoints(wire.servers))
        yield wire


@pytest.fixture
def aws_reef(eks, kube_apis, tmp_path):
    """An AWS reef short of compute: its one Kubernetes pool (a cluster staff gave, by kubeconfig) has 1 slot."""
    given = kube_apis()
    reef = make_reef(make_region(cloud="aws", location=REGION), capacity_overrides=ONLY["compute"])
    template = make_pool(reef, PoolKind.COMPUTE, provider=Provider.KUBERNETES, capacity=1,
                         config={"kubeconfig": kubeconfig_of(given, tmp_path), "egress_address": "203.0.113.7",
                                 **EKS_SETTINGS})
    return {"reef": reef, "template": template, "given": given}


def test_an_eks_top_up_creates_a_new_cluster_and_never_uses_the_templates(
        aws_reef, eks, kube_apis, sync_tasks, django_capture_on_commit_callbacks, settings):
    # Staff's NEW_POOL_CONFIG is merged in, less what would name a cluster (its kubeconfig).
    settings.CELLHUB = {**settings.CELLHUB, "CAPACITY": {"NEW_POOL_CONFIG": {"kubernetes": {
        "kubeconfig": aws_reef["template"].config["kubeconfig"], "instance_types": ["m6i.large"]}}}}
    new_api = kube_apis()
    eks.servers.append(new_api)

    operation = top_up(aws_reef["reef"], django_capture_on_commit_callbacks)

    assert operation.state == OperationState.SUCCEEDED, operation.error
    pool = Pool.objects.get(pk=operation.pool_id)
    assert pool.status == PoolStatus.AVAILABLE, pool.status_reason
    name = f"{drivers.base.resource_prefix()}-p{pool.pk}"
    # The SDK calls made: one cluster and one node group, named after the new pool, with the region's settings.
    (create,) = eks.called("CreateCluster")
    assert create == {
        "name": name, "roleArn": EKS_SETTINGS["eks_role_arn"], "tags": {"cellhub-pool": str(pool.pk)},
        "resourcesVpcConfig": {"subnetIds": EKS_SETTINGS["subnet_ids"], "securityGroupIds": ["sg-0c3"],
                               "endpointPublicAccess": True, "endpointPrivateAccess": True},
    }
    (nodegroup,) = eks.called("CreateNodegroup")
    assert nodegroup == {
        "clusterName": name, "nodegroupName": f"{name}-nodes", "nodeRole": EKS_SETTINGS["node_role_arn"],
        "subnets": EKS_SETTINGS["subnet_ids"], "instanceTypes": ["m6i.large"], "tags": {"cellhub-pool": str(pool.pk)},
        "scalingConfig": {"minSize": 2, "maxSize": 2, "desiredSize": 2},
    }
    # The config names the new cluster (its endpoint is the new API's), nothing of the template's.
    assert pool.config["cluster"] == "eks"
    assert pool.config["eks_cluster"] == name and pool.config["eks_nodegroup"] == f"{name}-nodes"
    assert pool.config["cluster_endpoint"] == new_api.host != aws_reef["given"].host
    assert "kubeconfig" not in pool.config and "egress_address" not in pool.config
    assert pool.external_id == eks.backend().clusters[name].arn
    # The check that the new cluster answers went to the new cluster, signed with an EKS token; the template's
    # cluster was never called.
    (read,) = api_reads(new_api)
    assert read["authorization"].startswith("Bearer k8s-aws-v1.")
    assert aws_reef["given"].requests == []

    # The next top-up takes the EKS pool as its template: a third cluster, on a third API.
    third_api = kube_apis()
    eks.servers.append(third_api)
    Pool.objects.filter(pk=pool.pk).update(capacity=1)
    second = top_up(aws_reef["reef"], django_capture_on_commit_callbacks)
    assert second.state == OperationState.SUCCEEDED, second.error
    newest = Pool.objects.get(pk=second.pool_id)
    endpoints = [p.config.get("cluster_endpoint") or aws_reef["given"].host
                 for p in Pool.objects.filter(reef=aws_reef["reef"], kind=PoolKind.COMPUTE)]
    assert len(set(endpoints)) == 3, endpoints
    assert newest.config["cluster_endpoint"] == third_api.host
    assert [c["name"] for c in eks.called("CreateCluster")] == [name, f"{drivers.base.resource_prefix()}-p{newest.pk}"]
    assert sorted(eks.backend().clusters) == sorted([name, newest.config["eks_cluster"]])
    assert api_reads(new_api) == [read]  # the first new cluster was not touched by the second top-up


def test_the_eks_token_is_minted_as_aws_eks_get_token_does_and_renewed(aws_reef, eks, kube_apis, monkeypatch):
    api = kube_apis()
    eks.servers.append(api)
    pool = make_pool(aws_reef["reef"], PoolKind.COMPUTE, provider=Provider.KUBERNETES, status=PoolStatus.PROVISIONING,
                     config={"cluster": "eks", **EKS_SETTINGS})
    cluster = EksCluster(pool, pool.config)
    cluster.ensure()

    token = cluster.token()
    assert token.startswith("k8s-aws-v1.") and "=" not in token
    encoded = token.removeprefix("k8s-aws-v1.")
    url = urlparse(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode())
    query = parse_qs(url.query)
    assert url.hostname.startswith("sts.") and url.hostname.endswith(".amazonaws.com")
    assert query["Action"] == ["GetCallerIdentity"] and query["Version"] == ["2011-06-15"]
    assert query["X-Amz-Expires"] == ["60"]
    assert query["X-Amz-SignedHeaders"] == ["host;x-k8s-aws-id"]  # the cluster's name is signed into it
    assert eks.signed[-1]["x-k8s-aws-id"] == cluster.name

    # The client is built from describe_cluster: the endpoint, and the CA (checked for an https endpoint).
    described = eks.backend().clusters[cluster.name]
    client = cluster.api_client()
    assert client.configuration.host == api.host
    described.endpoint = "https://abc.gr7.us-east-1.eks.amazonaws.com/"
    secure = cluster.api_client()
    assert secure.configuration.host == "https://abc.gr7.us-east-1.eks.amazonaws.com"
    ca = Path(secure.configuration.ssl_ca_cert).read_bytes()
    assert ca == base64.b64decode(described.certificate_authority["data"])

    # Each request carries a token; one older than the refresh age is replaced by a fresh one first.
    from kubernetes import client as k8s

    signed_before = len(eks.signed)
    k8s.CoreV1Api(client).list_namespace(limit=1)
    assert len(eks.signed) == signed_before  # young: reused
    monkeypatch.setattr(kubernetes_clusters, "TOKEN_REFRESH_SECONDS", 0)
    k8s.CoreV1Api(client).list_namespace(limit=1)
    k8s.CoreV1Api(client).list_namespace(limit=1)
    assert len(eks.signed) == signed_before + 2
    tokens = [r["authorization"] for r in api_reads(api)]
    assert all(t.startswith("Bearer k8s-aws-v1.") for t in tokens)


def _fail_cluster(parsed):
    EksWire.backend().clusters[parsed["cluster"]["name"]].status = "FAILED"


def _fail_nodegroup(parsed):
    nodegroup = parsed["nodegroup"]
    EksWire.backend().clusters[nodegroup["clusterName"]].nodegroups[nodegroup["nodegroupName"]].status = (
        "CREATE_FAILED")


@pytest.mark.parametrize("step", ["create cluster refused", "cluster failed", "create node group refused",
                                  "node group failed", "cluster does not answer", "a later step failed"])
def test_an_eks_top_up_failing_at_any_step_leaves_no_cluster_nor_node_group(
        step, aws_reef, eks, kube_apis, sync_tasks, django_capture_on_commit_callbacks):
    if step == "create cluster refused":
        eks.refuse["CreateCluster"] = "InvalidParameterException"
    elif step == "cluster failed":
        eks.after["CreateCluster"] = _fail_cluster
    elif step == "create node group refused":
        eks.refuse["CreateNodegroup"] = "ResourceLimitExceededException"
    elif step == "node group failed":
        eks.after["CreateNodegroup"] = _fail_nodegroup
    elif step == "a later step failed":
        faults.arm("top_up.pool.after", "permanent")
    if step != "cluster does not answer":  # else no API answers at the cluster's endpoint
        eks.servers.append(kube_apis())

    operation = top_up(aws_reef["reef"], django_capture_on_commit_callbacks)

    assert operation.state == OperationState.FAILED
    pool = Pool.objects.get(pk=operation.pool_id)
    assert pool.status == PoolStatus.FAILED
    assert eks.backend().clusters == {}  # nothing left behind: no cluster, so no node group either
    assert "cleanup incomplete" not in operation.error, operation.error
    created = [c["name"] for c in eks.called("CreateCluster")]
    assert set(created) <= {f"{drivers.base.resource_prefix()}-p{pool.pk}"}
    if step != "create cluster refused":
        deleted = [c["name"] for c in eks.called("DeleteCluster")]
        assert deleted == [f"{drivers.base.resource_prefix()}-p{pool.pk}"]  # its own cluster, nothing else
    assert aws_reef["given"].requests == []


def test_deleting_an_eks_pool_leaves_a_cluster_that_is_not_its_own(aws_reef, eks):
    """A cluster carrying the name the hub would give, but not the pool's tag, is never used nor deleted."""
    pool = make_pool(aws_reef["reef"], PoolKind.COMPUTE, provider=Provider.KUBERNETES, status=PoolStatus.PROVISIONING,
                     config={"cluster": "eks", **EKS_SETTINGS})
    name = f"{drivers.base.resource_prefix()}-p{pool.pk}"
    boto3.client("eks", region_name=REGION).create_cluster(
        name=name, roleArn=EKS_SETTINGS["eks_role_arn"], resourcesVpcConfig={"subnetIds": ["subnet-x"]},
        tags={"owner": "someone else"})
    driver = drivers.for_pool(pool)
    with pytest.raises(drivers.PermanentDriverError, match="not pool"):
        driver.provision_pool()
    driver.delete_pool()
    assert list(eks.backend().clusters) == [name]
    assert eks.called("DeleteCluster") == [] and eks.called("CreateCluster")[-1]["tags"] == {"owner": "someone else"}


# -- Azure: AKS --------------------------------------------------------------------------------------------------


@pytest.fixture
def aks_cloud(monkeypatch, settings):
    cloud = AzureCloud()
    monkeypatch.setattr(azure_requests_transport, "RequestsTransport", lambda *args, **kwargs: cloud)
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", FakeCredential)
    return cloud


@pytest.fixture
def azure_reef(aks_cloud, kube_apis, tmp_path):
    given = kube_apis()
    reef = make_reef(make_region(cloud="azure", location="westus2"), capacity_overrides=ONLY["compute"])
    template = make_pool(reef, PoolKind.COMPUTE, provider=Provider.KUBERNETES, capacity=1,
                         config={"kubeconfig": kubeconfig_of(given, tmp_path), "egress_address": "20.51.7.9",
                                 **AKS_SETTINGS})
    return {"reef": reef, "template": template, "given": given}


def test_an_aks_top_up_creates_a_new_managed_cluster_and_never_uses_the_templates(
        azure_reef, aks_cloud, kube_apis, sync_tasks, django_capture_on_commit_callbacks):
    azure = aks_cloud
    new_api = kube_apis()
    azure.new_cluster_servers.append(new_api.host)

    operation = top_up(azure_reef["reef"], django_capture_on_commit_callbacks)

    assert operation.state == OperationState.SUCCEEDED, operation.error
    pool = Pool.objects.get(pk=operation.pool_id)
    name = f"{drivers.base.resource_prefix()}-p{pool.pk}"
    path = f"/subscriptions/{SUB}/resourceGroups/rg-cells/providers/Microsoft.ContainerService/managedClusters/{name}"
    (put,) = azure.calls("PUT", r"/managedClusters/")
    assert put.path == path
    assert put.body["location"] == "westus2" and put.body["tags"] == {"cellhub-pool": str(pool.pk)}
    assert put.body["identity"] == {"type": "SystemAssigned"}
    properties = put.body["properties"]
    assert properties["dnsPrefix"] == name and properties["enableRBAC"] is True
    assert properties["agentPoolProfiles"] == [{"name": "nodes", "mode": "System", "osType": "Linux",
                                                "type": "VirtualMachineScaleSets", "count": 3,
                                                "vmSize": "Standard_D4s_v5"}]
    credentials = azure.calls("POST", r"/listClusterUserCredential$")
    assert credentials and {c.path for c in credentials} == {f"{path}/listClusterUserCredential"}
    # The config names the new cluster; the kubeconfig was read from Azure, never stored.
    fqdn = azure.resources[path.lower()]["properties"]["fqdn"]
    assert pool.config["cluster"] == "aks" and pool.config["aks_cluster"] == name
    assert pool.config["cluster_endpoint"] == f"https://{fqdn}"
    assert "kubeconfig" not in pool.config
    # Its egress address is the new cluster's outbound IP (read from Azure), not the template cluster's.
    (ip_ref,) = azure.resources[path.lower()]["properties"]["networkProfile"]["loadBalancerProfile"][
        "effectiveOutboundIPs"]
    assert [c.path for c in azure.calls("GET", r"/publicIPAddresses/")] == [ip_ref["id"]]
    address = azure.resources[ip_ref["id"].lower()]["properties"]["ipAddress"]
    assert pool.config["egress_address"] == address != azure_reef["template"].config["egress_address"]
    assert pool.external_id == path
    (read,) = api_reads(new_api)
    assert read["authorization"] == f"Bearer aks-user-token-{name}"
    assert azure_reef["given"].requests == []


@pytest.mark.parametrize("step", ["create refused", "creation failed", "credentials refused", "a later step failed"])
def test_an_aks_top_up_failing_at_any_step_leaves_no_cluster(
        step, azure_reef, aks_cloud, kube_apis, sync_tasks, django_capture_on_commit_callbacks):
    azure = aks_cloud
    azure.new_cluster_servers.append(kube_apis().host)
    next_pool = Pool.objects.order_by("-pk").values_list("pk", flat=True).first() + 1
    if step == "create refused":
        azure.fail("PUT", r"/managedClusters/", times=100)
    elif step == "creation failed":  # Azure keeps the Failed cluster: the hub must delete it
        azure.failing_clusters.add(f"{drivers.base.resource_prefix()}-p{next_pool}")
    elif step == "credentials refused":
        azure.fail("POST", r"/listClusterUserCredential$", times=100, status=403)
    else:
        faults.arm("top_up.pool.after", "permanent")

    operation = top_up(azure_reef["reef"], django_capture_on_commit_callbacks)

    assert operation.state == OperationState.FAILED
    assert operation.pool_id == next_pool
    assert Pool.objects.get(pk=operation.pool_id).status == PoolStatus.FAILED
    assert azure.arm_paths(r"/managedClusters/|/MC_") == []  # nor its node resource group
    assert "cleanup incomplete" not in operation.error, operation.error
    deletes = azure.calls("DELETE", r"/managedClusters/")
    if step == "create refused":
        assert deletes == []
    else:
        assert {d.path.rsplit("/", 1)[-1] for d in deletes} == {f"{drivers.base.resource_prefix()}-p{next_pool}"}


# -- clouds without a cluster API; PostgreSQL ----------------------------------------------------------------------


def test_a_kubernetes_top_up_in_a_region_without_a_cluster_api_is_refused_as_a_shortfall(
        kube_apis, tmp_path, sync_tasks, django_capture_on_commit_callbacks):
    given = kube_apis()
    reef = make_reef(make_region(cloud="local"), capacity_overrides=ONLY["compute"])
    make_pool(reef, PoolKind.COMPUTE, provider=Provider.KUBERNETES, capacity=1,
              config={"kubeconfig": kubeconfig_of(given, tmp_path)})

    with django_capture_on_commit_callbacks(execute=True):
        assert reef_top_up(reef=reef) == []

    (shortfall,) = reef_capacity(reef=reef).shortfalls
    assert shortfall.kind == "compute" and shortfall.slots == 4
    assert "cluster API" in shortfall.reason and "local region" in shortfall.reason
    assert Pool.objects.filter(reef=reef).count() == 1  # no pool ordered: never the given cluster again
    assert given.requests == []


def test_a_postgres_top_up_outside_a_local_region_is_refused_as_a_shortfall(aws_env):
    reef = make_reef(make_region(cloud="aws", location=REGION), capacity_overrides=ONLY["database"])
    make_pool(reef, PoolKind.DATABASE, provider=Provider.POSTGRES, capacity=1, config=POSTGRES_POOL_CONFIG)
    assert reef_top_up(reef=reef) == []
    (shortfall,) = reef_capacity(reef=reef).shortfalls
    assert "managed cluster on the hub's own machine" in shortfall.reason and "aws" in shortfall.reason


def test_a_postgres_top_up_on_a_machine_without_postgresql_is_refused_as_a_shortfall(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(postgres_cluster.glob, "glob", lambda pattern: [])  # no /usr/lib/postgresql/*/bin either
    reef = make_reef(make_region(cloud="local"), capacity_overrides=ONLY["database"])
    make_pool(reef, PoolKind.DATABASE, provider=Provider.POSTGRES, capacity=1, config=POSTGRES_POOL_CONFIG)
    assert reef_top_up(reef=reef) == []
    (shortfall,) = reef_capacity(reef=reef).shortfalls
    assert "initdb is not installed" in shortfall.reason


def _server_identity(**connect) -> tuple[int, str]:
    with psycopg.connect(**{"connect_timeout": 10, **connect}) as connection:
        system = connection.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]
        data = connection.execute("SHOW data_directory").fetchone()[0]
    return system, data


@pytest.fixture
def reachable_var_dir(settings):
    """A var directory the postgres OS user can reach (managed clusters run as that user); removed afterwards."""
    var_dir = Path(tempfile.mkdtemp(prefix="cellhub-isolation-", dir="/tmp"))
    var_dir.chmod(0o711)
    settings.CELLHUB = {**settings.CELLHUB, "VAR_DIR": var_dir}
    yield var_dir
    shutil.rmtree(var_dir, ignore_errors=True)


def test_a_postgres_top_up_from_an_external_server_makes_a_managed_cluster_of_its_own(
        reachable_var_dir, monkeypatch, sync_tasks, django_capture_on_commit_callbacks):
    monkeypatch.setenv("CELLHUB_POOL_SECRET_TEMPLATE_ADMIN", "not-used-by-the-new-pool")
    reef = make_reef(make_region(cloud="local"), capacity_overrides=ONLY["database"])
    external = {**POSTGRES_POOL_CONFIG, "admin_database": "postgres", "sslmode": "prefer",
                "admin_password_env": "CELLHUB_POOL_SECRET_TEMPLATE_ADMIN", "connect_timeout": 5}
    make_pool(reef, PoolKind.DATABASE, provider=Provider.POSTGRES, capacity=1, config=external)

    operation = top_up(reef, django_capture_on_commit_callbacks)
    pool = Pool.objects.get(pk=operation.pool_id)
    try:
        assert operation.state == OperationState.SUCCEEDED, operation.error
        assert pool.config["managed"] is True
        for key in ("admin_user", "admin_database", "admin_password_env", "sslmode", "connect_timeout"):
            assert key not in pool.config, key
        assert pool.config["port"] in postgres_cluster.port_range() and pool.config["port"] != external["port"]
        # At the wire: two servers, two clusters (their system identifiers and data directories differ).
        driver = drivers.for_pool(pool)
        new = _server_identity(**driver._connect_kwargs())
        template = _server_identity(host=external["host"], port=external["port"], user="postgres",
                                    dbname="postgres")
        assert new[0] != template[0]
        assert new[1] == pool.config["data_dir"] != template[1]
        assert Path(pool.config["data_dir"]).is_relative_to(postgres_cluster.root() / f"pool{pool.pk}")
    finally:
        drivers.for_pool(Pool.objects.get(pk=pool.pk)).delete_pool()
