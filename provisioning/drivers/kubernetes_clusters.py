"""Clusters the hub creates for a Kubernetes compute pool, through its cloud's own API: EKS on AWS, AKS on Azure.

A top-up gives every new Kubernetes pool a cluster of its own (``KubernetesComputeDriver.derived_config`` sets the
pool's ``cluster`` to ``eks`` or ``aks`` by its region's cloud), never its template's. A cluster's names derive from
its pool's id (``cellhub-p<id>``, its EKS node group ``cellhub-p<id>-nodes``), it carries the tag
``cellhub-pool=<id>``, and the hub deletes a cluster only when it carries that pool's tag: nothing else.

Connections are never stored (the pool's config holds the cluster's name and endpoint, for people and for the
isolation checks): each ApiClient is built from the cloud's answer of the moment —

- EKS: ``describe_cluster`` (endpoint and certificate authority) and a bearer token minted as ``aws eks get-token``
  mints it: a presigned STS ``GetCallerIdentity`` URL signed with the header ``x-k8s-aws-id: <cluster>``, encoded
  base64url without padding and prefixed ``k8s-aws-v1.``. EKS honours one for 15 minutes, so the client mints a
  fresh one when its own is ``TOKEN_REFRESH_SECONDS`` old;
- AKS: the kubeconfig ``listClusterUserCredential`` answers, loaded in memory. A new AKS cluster's outbound address
  (its ``egress_address``, which database and storage firewalls admit) is read from its load balancer's public IP.

Waits are bounded by the pool's ``waiter_delay_seconds`` × ``waiter_max_attempts`` (default 20 s × 24: 8 minutes,
under the top-up step's time limit). Past that a wait raises ``TransientDriverError``; the step, repeated, finds
what exists (names derive from the id) and waits again, so a slow cluster never makes a second one.
"""
from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable

import yaml
from azure.core.rest import HttpRequest
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.containerservice.models import (
    ManagedCluster,
    ManagedClusterAgentPoolProfile,
    ManagedClusterIdentity,
    ManagedClusterProperties,
)
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from provisioning.drivers.base import PermanentDriverError, TransientDriverError, resource_name
from provisioning.drivers.cloud_retry import (
    CloudConflictError,
    CloudNotFoundError,
    aws_client,
    azure_client,
    cloud_call,
    require_config,
)

logger = logging.getLogger(__name__)

TAG = "cellhub-pool"
TOKEN_PREFIX = "k8s-aws-v1."
TOKEN_REFRESH_SECONDS = 10 * 60  # EKS accepts a token for 15 minutes
PRESIGN_SECONDS = 60  # what ``aws eks get-token`` signs for
EKS_NOT_FOUND = ("ResourceNotFoundException",)
EKS_IN_USE = ("ResourceInUseException",)
EKS_REQUIRED = ("eks_role_arn", "node_role_arn", "subnet_ids")
AKS_REQUIRED = ("subscription_id", "resource_group")
PUBLIC_IP_API_VERSION = "2024-05-01"  # Microsoft.Network/publicIPAddresses, read for a cluster's outbound address


def cluster_name(pool) -> str:
    """The name of the cluster the hub makes for ``pool``: ``<prefix>-p<id>``."""
    return resource_name("p", pool.pk)


def eks_token(sts, cluster: str) -> str:
    """A bearer token for EKS cluster ``cluster``, as ``aws eks get-token`` makes it (see the module)."""

    def add_cluster_header(request, **kwargs):
        request.headers["x-k8s-aws-id"] = cluster

    # Added before signing, so the header is one of the URL's signed headers: the token is good for this cluster only.
    sts.meta.events.register("before-sign.sts.GetCallerIdentity", add_cluster_header,
                             unique_id=f"cellhub-eks-token-{cluster}")
    url = sts.generate_presigned_url("get_caller_identity", Params={}, ExpiresIn=PRESIGN_SECONDS, HttpMethod="GET")
    return TOKEN_PREFIX + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def _kubeconfig(name: str, server: str, ca_data: str, user: dict) -> dict:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "cellhub"}}],
        "users": [{"name": "cellhub", "user": user}],
    }


def _api_client(kubeconfig: dict) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    k8s_config.load_kube_config_from_dict(kubeconfig, client_configuration=configuration, persist_config=False)
    return k8s.ApiClient(configuration)


class _ClusterApi:
    """What a cloud's cluster API gives a Kubernetes pool: ``ensure`` (create or find, wait until it serves),
    ``delete`` (ours only; absent is fine) and ``api_client``."""

    def __init__(self, pool, config: dict):
        self.pool, self.config = pool, config
        self.name = cluster_name(pool)

    def _waits(self) -> tuple[float, int]:
        return float(self.config.get("waiter_delay_seconds", 20)), int(self.config.get("waiter_max_attempts", 24))

    def _wait(self, read: Callable[[], str | None], *, ready: str, failed: set[str], what: str,
              gone_is_ready: bool = False) -> None:
        """Poll ``read()`` (a status, None when absent) until ``ready``; ``PermanentDriverError`` on a ``failed``
        status (or absence, unless ``gone_is_ready``), ``TransientDriverError`` when the wait runs out."""
        delay, attempts = self._waits()
        status = None
        for attempt in range(attempts):
            status = read()
            if status == ready or (status is None and gone_is_ready):
                return
            if status is None:
                raise PermanentDriverError(f"{what} disappeared while the hub waited for it")
            if status in failed:
                raise PermanentDriverError(f"{what} is {status}")
            if attempt < attempts - 1:
                time.sleep(delay)
        raise TransientDriverError(f"{what} is still {status} after {delay * attempts:.0f} s; waiting again")

    def _ours(self, tags: dict | None) -> bool:
        return (tags or {}).get(TAG) == str(self.pool.pk)


class EksCluster(_ClusterApi):
    """An EKS cluster and its managed node group. Config: ``eks_role_arn`` (the cluster's service role, passed with
    ``iam:PassRole``), ``node_role_arn`` (the nodes' role), ``subnet_ids`` (at least two, in two zones): required;
    ``security_group_ids``, ``kubernetes_version``, ``instance_types`` (default ``["t3.large"]``), ``node_count``
    (default 2), ``endpoint_public_access`` (default true: the hub reaches the API from outside the VPC)."""

    def __init__(self, pool, config: dict):
        super().__init__(pool, config)
        self.nodegroup = f"{self.name}-nodes"
        self._clients: dict = {}

    def _client(self, service: str):
        if service not in self._clients:
            self._clients[service] = aws_client(service, self.pool.reef.region.location)
        return self._clients[service]

    def describe(self) -> dict | None:
        try:
            return cloud_call(f"describe EKS cluster {self.name}",
                              lambda: self._client("eks").describe_cluster(name=self.name),
                              not_found=EKS_NOT_FOUND)["cluster"]
        except CloudNotFoundError:
            return None

    def describe_nodegroup(self) -> dict | None:
        try:
            return cloud_call(
                f"describe EKS node group {self.nodegroup}",
                lambda: self._client("eks").describe_nodegroup(clusterName=self.name, nodegroupName=self.nodegroup),
                not_found=EKS_NOT_FOUND,
            )["nodegroup"]
        except CloudNotFoundError:
            return None

    def _status(self, read) -> Callable[[], str | None]:
        return lambda: (read() or {}).get("status")

    def ensure(self) -> dict:
        """Create (or find) the cluster, wait until it is ACTIVE, then its node group likewise. Raises
        ``PermanentDriverError`` naming missing config before any call, or for a cluster of that name that is not
        this pool's (never used), or one that FAILED; ``TransientDriverError`` while either is still being made."""
        settings = require_config(self.config, EKS_REQUIRED, where=f"EKS cluster of pool {self.pool}")
        subnets = list(settings["subnet_ids"])
        tags = {TAG: str(self.pool.pk)}
        cluster = self.describe()
        if cluster is None:
            vpc = {"subnetIds": subnets, "endpointPublicAccess": bool(self.config.get("endpoint_public_access", True)),
                   "endpointPrivateAccess": True}
            if self.config.get("security_group_ids"):
                vpc["securityGroupIds"] = list(self.config["security_group_ids"])
            params = {"name": self.name, "roleArn": settings["eks_role_arn"], "resourcesVpcConfig": vpc, "tags": tags}
            if self.config.get("kubernetes_version"):
                params["version"] = str(self.config["kubernetes_version"])
            try:
                cloud_call(f"create EKS cluster {self.name}", lambda: self._client("eks").create_cluster(**params),
                           conflict=EKS_IN_USE)
            except CloudConflictError:
                pass  # a repeat of this step: it exists
            cluster = self.describe()
            if cluster is None:
                raise TransientDriverError(f"EKS cluster {self.name} was created but is not described yet")
        if not self._ours(cluster.get("tags")):
            raise PermanentDriverError(f"EKS cluster {self.name} exists and is not pool {self.pool.pk}'s: left alone")
        self._wait(self._status(self.describe), ready="ACTIVE", failed={"FAILED", "DELETING"},
                   what=f"EKS cluster {self.name}")
        if self.describe_nodegroup() is None:
            count = int(self.config.get("node_count", 2))
            params = {
                "clusterName": self.name, "nodegroupName": self.nodegroup, "nodeRole": settings["node_role_arn"],
                "subnets": subnets, "instanceTypes": list(self.config.get("instance_types") or ["t3.large"]),
                "scalingConfig": {"minSize": count, "maxSize": count, "desiredSize": count}, "tags": tags,
            }
            try:
                cloud_call(f"create EKS node group {self.nodegroup}",
                           lambda: self._client("eks").create_nodegroup(**params), conflict=EKS_IN_USE)
            except CloudConflictError:
                pass
        self._wait(self._status(self.describe_nodegroup), ready="ACTIVE",
                   failed={"CREATE_FAILED", "DELETE_FAILED", "DELETING", "DEGRADED"},
                   what=f"EKS node group {self.nodegroup}")
        cluster = self.describe() or {}
        return {
            "external_id": cluster.get("arn", ""),
            "config": {"eks_cluster": self.name, "eks_nodegroup": self.nodegroup,
                       "cluster_endpoint": (cluster.get("endpoint") or "").rstrip("/")},
        }

    def delete(self) -> None:
        """Delete the node group, wait until it is gone (EKS refuses to delete a cluster that has one), then the
        cluster, and wait until that is gone too: the pool is retired only once nothing of it is left in the cloud
        (a cluster still deleting when the wait runs out is a ``TransientDriverError``: the step, repeated, waits
        again; one that ends FAILED is a ``PermanentDriverError``). Absent is fine, and a cluster that is not this
        pool's is left alone."""
        cluster = self.describe()
        if cluster is None:
            return
        if not self._ours(cluster.get("tags")):
            logger.warning("EKS cluster %s is not pool %s's: not deleted", self.name, self.pool.pk)
            return
        nodegroup = self.describe_nodegroup()
        if nodegroup is not None:
            if nodegroup.get("status") != "DELETING":
                try:
                    cloud_call(
                        f"delete EKS node group {self.nodegroup}",
                        lambda: self._client("eks").delete_nodegroup(clusterName=self.name,
                                                                     nodegroupName=self.nodegroup),
                        not_found=EKS_NOT_FOUND,
                    )
                except CloudNotFoundError:
                    pass
            self._wait(self._status(self.describe_nodegroup), ready="", failed={"DELETE_FAILED"},
                       what=f"EKS node group {self.nodegroup} (deleting)", gone_is_ready=True)
        if cluster.get("status") != "DELETING":
            try:
                cloud_call(f"delete EKS cluster {self.name}",
                           lambda: self._client("eks").delete_cluster(name=self.name), not_found=EKS_NOT_FOUND)
            except CloudNotFoundError:
                return
        self._wait(self._status(self.describe), ready="", failed={"FAILED"},
                   what=f"EKS cluster {self.name} (deleting)", gone_is_ready=True)

    def token(self) -> str:
        return eks_token(self._client("sts"), self.name)

    def api_client(self) -> k8s.ApiClient:
        """A client of the cluster: its endpoint and CA from ``describe_cluster``, a token minted now and again
        whenever it is ``TOKEN_REFRESH_SECONDS`` old."""
        cluster = self.describe()
        if cluster is None or not cluster.get("endpoint"):
            raise PermanentDriverError(f"EKS cluster {self.name} of pool {self.pool} does not exist (or no endpoint)")
        minted = {"at": time.monotonic()}
        kubeconfig = _kubeconfig(self.name, cluster["endpoint"].rstrip("/"),
                                 cluster.get("certificateAuthority", {}).get("data", ""), {"token": self.token()})
        api = _api_client(kubeconfig)

        def refresh(configuration):  # called by the client before each request (``get_api_key_with_prefix``)
            if time.monotonic() - minted["at"] >= TOKEN_REFRESH_SECONDS:
                configuration.api_key["BearerToken"] = f"Bearer {self.token()}"
                minted["at"] = time.monotonic()

        api.configuration.refresh_api_key_hook = refresh
        return api


class AksCluster(_ClusterApi):
    """An AKS managed cluster (one system node pool, a system-assigned identity). Config: ``subscription_id`` and
    ``resource_group``: required; ``location`` (default: the region's), ``kubernetes_version``, ``node_vm_size``
    (default ``Standard_D4s_v5``), ``node_count`` (default 2). ``credential``/``transport``/``polling_interval``: as
    ``cloud_retry.azure_client`` takes them."""

    def __init__(self, pool, config: dict, *, credential=None, transport=None, polling_interval=None):
        super().__init__(pool, config)
        self._azure = {"credential": credential, "transport": transport, "polling_interval": polling_interval}
        self._client = None

    @property
    def required(self) -> dict:
        return require_config(self.config, AKS_REQUIRED, where=f"AKS cluster of pool {self.pool}")

    @property
    def client(self):
        if self._client is None:
            self._client = azure_client(ContainerServiceClient, self.required["subscription_id"], **self._azure)
        return self._client

    def get(self):
        """The managed cluster, or None."""
        try:
            return cloud_call(f"read AKS cluster {self.name}",
                              lambda: self.client.managed_clusters.get(self.required["resource_group"], self.name))
        except CloudNotFoundError:
            return None

    def _state(self) -> str | None:
        found = self.get()
        return None if found is None else (found.properties.provisioning_state if found.properties else "")

    def _desired(self) -> ManagedCluster:
        location = self.config.get("location") or self.pool.reef.region.location
        if not location:
            raise PermanentDriverError(f"AKS cluster of pool {self.pool}: no location (config 'location' or region)")
        nodes = ManagedClusterAgentPoolProfile(
            name="nodes", mode="System", os_type="Linux", type="VirtualMachineScaleSets",
            count=int(self.config.get("node_count", 2)), vm_size=self.config.get("node_vm_size", "Standard_D4s_v5"),
        )
        properties = ManagedClusterProperties(dns_prefix=self.name, agent_pool_profiles=[nodes], enable_rbac=True)
        if self.config.get("kubernetes_version"):
            properties.kubernetes_version = str(self.config["kubernetes_version"])
        return ManagedCluster(location=location, tags={TAG: str(self.pool.pk)}, properties=properties,
                              identity=ManagedClusterIdentity(type="SystemAssigned"))

    def ensure(self) -> dict:
        """Create the managed cluster (an ARM PUT, a long-running operation) or find it, and wait until it has
        succeeded. Raises ``PermanentDriverError`` for missing config (before any call), a cluster of that name that
        is not this pool's, or one that Failed; ``TransientDriverError`` while it is still being made."""
        group = self.required["resource_group"]
        desired = self._desired()
        found = self.get()
        if found is not None and not self._ours(found.tags):
            raise PermanentDriverError(f"AKS cluster {self.name} exists and is not pool {self.pool.pk}'s: left alone")
        if found is None:
            poller = cloud_call(f"create AKS cluster {self.name}",
                                lambda: self.client.managed_clusters.begin_create_or_update(group, self.name, desired))
            self._finish(poller, f"create AKS cluster {self.name}")
        self._wait(self._state, ready="Succeeded", failed={"Failed", "Canceled", "Deleting"},
                   what=f"AKS cluster {self.name}")
        found = self.get()
        config = {"aks_cluster": self.name, "cluster_endpoint": f"https://{found.properties.fqdn}"}
        if address := self.outbound_address(found):
            config["egress_address"] = address
        return {"external_id": found.id or "", "config": config}

    def outbound_address(self, cluster: ManagedCluster) -> str:
        """The public address every pod of the cluster leaves through (its load balancer's or managed NAT gateway's
        first effective outbound IP, which AKS picks when it creates the cluster): what the database server and the
        storage account admit (``egress_address``). "" when the cluster names none (user-defined routing)."""
        network = cluster.properties.network_profile if cluster.properties else None
        references = []
        for profile in (getattr(network, "load_balancer_profile", None), getattr(network, "nat_gateway_profile", None)):
            references += list(getattr(profile, "effective_outbound_i_ps", None) or [])
        if not references or not references[0].id:
            logger.warning("AKS cluster %s names no outbound address: set the pool's egress_address", self.name)
            return ""
        ip_id = references[0].id

        def read():
            response = self.client.send_request(HttpRequest("GET", f"{ip_id}?api-version={PUBLIC_IP_API_VERSION}"))
            response.raise_for_status()
            return response.json()

        answer = cloud_call(f"read the outbound address of AKS cluster {self.name}", read)
        return (answer.get("properties") or {}).get("ipAddress", "")

    def delete(self) -> None:
        """Delete the managed cluster (its node pools and node resource group go with it); absent is fine, and a
        cluster that is not this pool's is left alone. Waits (bounded) for the deletion to finish."""
        found = self.get()
        if found is None:
            return
        if not self._ours(found.tags):
            logger.warning("AKS cluster %s is not pool %s's: not deleted", self.name, self.pool.pk)
            return
        try:
            poller = cloud_call(
                f"delete AKS cluster {self.name}",
                lambda: self.client.managed_clusters.begin_delete(self.required["resource_group"], self.name),
            )
        except CloudNotFoundError:
            return
        try:
            self._finish(poller, f"delete AKS cluster {self.name}")
        except CloudNotFoundError:
            pass

    def _finish(self, poller, what: str) -> None:
        """Wait (bounded) for a long-running operation; its failure is the cloud's error, sorted by ``cloud_call``;
        ``TransientDriverError`` when it is still running."""
        delay, attempts = self._waits()
        cloud_call(what, lambda: poller.wait(timeout=delay * attempts), attempts=1)
        if not poller.done():
            raise TransientDriverError(f"{what}: still running after {delay * attempts:.0f} s; waiting again")
        cloud_call(what, poller.result, attempts=1)

    def api_client(self) -> k8s.ApiClient:
        """A client of the cluster from the kubeconfig ``listClusterUserCredential`` answers now (never stored)."""
        credentials = cloud_call(
            f"read the user credentials of AKS cluster {self.name}",
            lambda: self.client.managed_clusters.list_cluster_user_credentials(self.required["resource_group"],
                                                                               self.name),
        )
        kubeconfigs = credentials.kubeconfigs or []
        if not kubeconfigs or not kubeconfigs[0].value:
            raise PermanentDriverError(f"AKS cluster {self.name} answered no kubeconfig")
        value = kubeconfigs[0].value
        try:
            kubeconfig = yaml.safe_load(value.decode() if isinstance(value, bytes) else base64.b64decode(value))
        except (yaml.YAMLError, ValueError) as error:
            raise PermanentDriverError(f"AKS cluster {self.name}: its kubeconfig cannot be read: {error}") from error
        return _api_client(kubeconfig)


CLUSTER_APIS = {"eks": EksCluster, "aks": AksCluster}
CLUSTER_BY_CLOUD = {"aws": "eks", "azure": "aks"}
