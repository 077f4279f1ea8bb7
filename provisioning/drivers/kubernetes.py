"""A Kubernetes cluster as a compute pool: one namespace per instance, holding what ``manifests.render`` gives.

Two kinds of pool, told apart by ``config["cluster"]``:

- **given** (no ``cluster``): a cluster staff made, reached through ``kubeconfig`` (a path) and ``context``; without
  ``kubeconfig`` the driver uses the in-cluster service account when the hub runs in a pod, else ``KUBECONFIG`` /
  ``~/.kube/config``. The cluster outlives the pool.
- **made by the hub** (``cluster``: ``eks`` or ``aks``): every pool a top-up orders in an AWS or Azure region. Its
  ``provision_pool`` creates a cluster of its own through the cloud's API, named after the pool, and
  ``delete_pool`` deletes it (``kubernetes_clusters``: the config each cloud needs, the permissions in
  docs/clouds.md). Its connection is built from the cloud's answer each time, never stored.

Reef isolation: the keys naming a cluster (``host_config_keys``) are never copied into a new pool, so a top-up never
lands on its template's cluster. In a region whose cloud has no cluster API (``local``: an on-premises cluster
reached by kubeconfig) a top-up is refused (``new_host_refusal``): the planner reports the shortfall and staff add
a cluster by hand, as a pool with its own kubeconfig.

``firewall_address``: which address of an instance its share admits — ``node`` (default on AWS), ``pod`` or
``egress`` (``egress_address``: the address every pod leaves the cluster from, their NAT's); see
``share_client_address``.

``deploy`` creates each manifest and, when it exists already (409), patches it with the same manifest, so
a repeat converges and never duplicates. Every call goes through ``cloud_call``.
"""
from __future__ import annotations

import json

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from provisioning.drivers import manifests
from provisioning.drivers.base import (
    Capabilities,
    ComputeDriver,
    DeploymentSpec,
    DeploymentStatus,
    PermanentDriverError,
    TransientDriverError,
)
from provisioning.drivers.cloud_retry import CloudConflictError, CloudNotFoundError, cloud_call
from provisioning.drivers.kubernetes_clusters import CLUSTER_APIS, CLUSTER_BY_CLOUD

MANAGED_BY = "app.kubernetes.io/managed-by=cellhub"
# Items per page of a list call over the whole cluster (the API server's continue token fetches the next).
LIST_PAGE = 500


def load_api_client(config: dict) -> k8s.ApiClient:
    """An ApiClient for the pool's cluster (see the module's docstring); ``ConfigException`` when there is none."""
    configuration = k8s.Configuration()
    if config.get("kubeconfig"):
        k8s_config.load_kube_config(
            config_file=config["kubeconfig"], context=config.get("context"), client_configuration=configuration
        )
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(context=config.get("context"), client_configuration=configuration)
    return k8s.ApiClient(configuration)


class KubernetesComputeDriver(ComputeDriver):
    """Deployments on one cluster. ``api_client`` replaces the one built from the config (tests use it)."""

    provider = "kubernetes"
    label = "Kubernetes"
    clouds = ("azure", "aws")  # AKS, EKS: any cluster the kubeconfig reaches
    default_for_clouds = ("azure", "aws")
    lead_time_hours = 1.0
    # What names the pool's cluster: its kubeconfig, the cluster the hub made for it, and the cluster's NAT address.
    host_config_keys = ("kubeconfig", "context", "eks_cluster", "eks_nodegroup", "aks_cluster", "cluster_endpoint",
                        "egress_address")
    capabilities = Capabilities()

    def __init__(self, pool, *, api_client: k8s.ApiClient | None = None):
        super().__init__(pool)
        self._api_client = api_client
        self._cluster_api = None

    @classmethod
    def new_host_refusal(cls, *, cloud: str) -> str:
        """A new pool needs a cluster of its own, made through its cloud's cluster API (EKS, AKS); other clouds have
        none the hub can call."""
        if cloud in CLUSTER_BY_CLOUD:
            return ""
        return (f"a Kubernetes top-up creates a cluster of its own through the cloud's cluster API (EKS, AKS), and "
                f"a {cloud} region has none: add a cluster by hand, as a new Kubernetes pool with its own kubeconfig")

    def derived_config(self) -> dict:
        """A new pool (a top-up) gets a cluster of its own through its region's cloud: ``cluster`` ``eks`` or
        ``aks``; nothing in a region without a cluster API (the top-up is refused there first)."""
        cluster = CLUSTER_BY_CLOUD.get(self.pool.reef.region.cloud)
        return {"cluster": cluster} if cluster else {}

    @property
    def cluster_api(self):
        """The cluster the hub made for this pool (``kubernetes_clusters``), or None for a given cluster."""
        kind = self.config.get("cluster")
        if not kind:
            return None
        if kind not in CLUSTER_APIS:
            raise PermanentDriverError(f"pool {self.pool}: cluster must be one of {sorted(CLUSTER_APIS)}, not {kind}")
        if self._cluster_api is None:
            self._cluster_api = CLUSTER_APIS[kind](self.pool, self.config)
        return self._cluster_api

    @property
    def api_client(self) -> k8s.ApiClient:
        """Raises ``PermanentDriverError`` naming what to set when no cluster config is found."""
        if self._api_client is None:
            if self.cluster_api is not None:
                self._api_client = self.cluster_api.api_client()
            else:
                self._api_client = cloud_call(
                    f"load the Kubernetes config of pool {self.pool}", lambda: load_api_client(self.config)
                )
        return self._api_client

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api_client)

    @property
    def apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.api_client)

    @property
    def networking(self) -> k8s.NetworkingV1Api:
        return k8s.NetworkingV1Api(self.api_client)

    def provision_pool(self) -> dict:
        """A given cluster: check it answers and return its API address. A cluster the hub makes: create (or find)
        it through its cloud and wait until it serves (``kubernetes_clusters``), then check it answers; returns its
        id and the config naming it. Safe to repeat; ``TransientDriverError`` while the cloud is still making it."""
        made = self.cluster_api.ensure() if self.cluster_api is not None else None
        cloud_call(f"reach the cluster of pool {self.pool}", lambda: self.core.list_namespace(limit=1))
        if made is not None:
            return made
        return {"external_id": self.api_client.configuration.host, "config": {}}

    def delete_pool(self) -> None:
        """A given cluster outlives the pool row: nothing to delete. A cluster the hub made for this pool is deleted
        (with its node group), and nothing else; absent is fine."""
        if self.cluster_api is not None:
            self.cluster_api.delete()

    # -- apply ----------------------------------------------------------------------------
    def _operations(self, manifest: dict):
        """(create, patch) callables of a manifest's kind."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        namespace = manifest["metadata"].get("namespace")
        table = {
            "Namespace": (
                lambda: self.core.create_namespace(manifest),
                lambda: self.core.patch_namespace(name, manifest),
            ),
            "Secret": (
                lambda: self.core.create_namespaced_secret(namespace, manifest),
                lambda: self.core.patch_namespaced_secret(name, namespace, manifest),
            ),
            "Deployment": (
                lambda: self.apps.create_namespaced_deployment(namespace, manifest),
                lambda: self.apps.patch_namespaced_deployment(name, namespace, manifest),
            ),
            "Service": (
                lambda: self.core.create_namespaced_service(namespace, manifest),
                lambda: self.core.patch_namespaced_service(name, namespace, manifest),
            ),
            "Ingress": (
                lambda: self.networking.create_namespaced_ingress(namespace, manifest),
                lambda: self.networking.patch_namespaced_ingress(name, namespace, manifest),
            ),
        }
        return table[kind]

    def apply(self, manifest: dict) -> None:
        """Create ``manifest``, or patch the existing object with it (strategic merge); idempotent."""
        create, patch = self._operations(manifest)
        what = f"{manifest['kind']} {manifest['metadata'].get('namespace', '')}/{manifest['metadata']['name']}"
        try:
            cloud_call(f"create {what}", create)
        except CloudConflictError:
            cloud_call(f"update {what}", patch)

    def deploy(self, *, spec: DeploymentSpec) -> None:
        """Apply the namespace, secret, deployment, service and ingress of ``spec``, in that order."""
        for manifest in manifests.render(spec):
            self.apply(manifest)

    # -- lifecycle ------------------------------------------------------------------------
    def _deployment(self, instance):
        """The instance's deployment (the hub's one in its namespace), or ``None``."""
        namespace = self.namespace(instance)
        found = cloud_call(
            f"list deployments of {namespace}",
            lambda: self.apps.list_namespaced_deployment(namespace, label_selector=MANAGED_BY),
        )
        return found.items[0] if found.items else None

    def _require_deployment(self, instance):
        deployment = self._deployment(instance)
        if deployment is None:
            raise PermanentDriverError(f"instance {instance} has no deployment in pool {self.pool}")
        return deployment

    def delete(self, *, instance) -> None:
        """Delete the instance's namespace and everything in it; absent is fine."""
        namespace = self.namespace(instance)
        try:
            cloud_call(
                f"delete namespace {namespace}",
                lambda: self.core.delete_namespace(namespace, propagation_policy="Background"),
            )
        except CloudNotFoundError:
            pass

    def status(self, *, instance) -> DeploymentStatus:
        deployment = self._deployment(instance)
        if deployment is None:
            return DeploymentStatus(exists=False)
        containers = deployment.spec.template.spec.containers
        return DeploymentStatus(
            exists=True,
            ready_replicas=(deployment.status.ready_replicas if deployment.status else None) or 0,
            replicas=deployment.spec.replicas or 0,
            image=containers[0].image if containers else "",
        )

    def _list_pages(self, what: str, list_call) -> list[dict]:
        """Every object of the hub (its label) that ``list_call`` (a ``list_*_for_all_namespaces``) returns, as the
        API's JSON, one page of ``LIST_PAGE`` per call (``limit`` / ``continue``); read raw, not into the client's
        models, which cost a millisecond an object on a large cluster."""
        items, token = [], None
        while True:
            response = cloud_call(what, lambda token=token: list_call(
                label_selector=MANAGED_BY, limit=LIST_PAGE, _continue=token, _preload_content=False,
            ))
            page = json.loads(response.data)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def statuses(self, *, instances) -> dict[int, DeploymentStatus]:
        """``status`` of each instance from one list of the hub's deployments in the cluster (paged: one call per
        ``LIST_PAGE`` deployments). An instance whose namespace holds none has ``exists=False``."""
        found: dict[str, dict] = {}
        for deployment in self._list_pages("list the hub's deployments", self.apps.list_deployment_for_all_namespaces):
            found.setdefault(deployment["metadata"]["namespace"], deployment)
        statuses = {}
        for instance in instances:
            deployment = found.get(self.namespace(instance))
            if deployment is None:
                statuses[instance.pk] = DeploymentStatus(exists=False)
                continue
            spec = deployment.get("spec") or {}
            containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
            statuses[instance.pk] = DeploymentStatus(
                exists=True,
                ready_replicas=(deployment.get("status") or {}).get("readyReplicas") or 0,
                replicas=spec.get("replicas") or 0,
                image=containers[0].get("image", "") if containers else "",
            )
        return statuses

    def scale(self, *, instance, replicas: int) -> None:
        """Set the deployment's replicas (0 stops the instance) through its scale subresource."""
        deployment = self._require_deployment(instance)
        name, namespace = deployment.metadata.name, deployment.metadata.namespace
        cloud_call(
            f"scale {namespace}/{name} to {replicas}",
            lambda: self.apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}}),
        )

    def set_image(self, *, instance, image: str) -> None:
        """Patch the server container's image (``repository:tag``); the deployment rolls out by itself."""
        deployment = self._require_deployment(instance)
        name, namespace = deployment.metadata.name, deployment.metadata.namespace
        container = deployment.spec.template.spec.containers[0].name
        body = {"spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}}
        cloud_call(
            f"set the image of {namespace}/{name}",
            lambda: self.apps.patch_namespaced_deployment(name, namespace, body),
        )

    def default_share_client_source(self) -> str:
        """``node`` on AWS (EKS: the Storage Gateway is inside the VPC, reached from the node's own address, no
        NAT); ``egress`` elsewhere (AKS: Azure Files' endpoint sees the cluster's outbound address)."""
        return "node" if self.pool.reef.region.cloud == "aws" else "egress"

    def share_client_address(self, *, instance) -> str:
        """The one address the instance's share admits, read from the instance's own pod (config
        ``firewall_address``):

        - ``node`` (the default on AWS): the pod's node (``status.hostIP``). The share is a pod volume (NFS), and the
          kubelet mounts pod volumes from the node, so the node's address is what the storage endpoint sees;
        - ``pod``: the pod's own address (``status.podIP``), for clusters where the pod itself is the storage client
          and reaches it un-NATed (EKS with the VPC CNI: pods hold VPC addresses);
        - ``egress`` (the default elsewhere): the pool's ``egress_address`` (one NAT for every pod: the widest, and
          what a storage service reached through the cluster's NAT sees — Azure Files from AKS).

        The newest running (else scheduled) pod of the instance counts. ``TransientDriverError`` while no pod has
        the address yet (not scheduled), so a plan step retries; ``PermanentDriverError`` for another setting.
        """
        source = self.config.get("firewall_address") or self.default_share_client_source()
        if source == "egress":
            return super().egress_address(instance=instance)
        if source not in ("node", "pod"):
            raise PermanentDriverError(f"pool {self.pool}: firewall_address must be node, pod or egress, not {source}")
        namespace = self.namespace(instance)
        pods = cloud_call(
            f"list the pods of {namespace}",
            lambda: self.core.list_namespaced_pod(namespace, label_selector=f"{manifests.LABEL}={instance.name}"),
        ).items
        live = [pod for pod in pods if pod.metadata.deletion_timestamp is None and pod.status is not None]
        live.sort(key=lambda pod: (pod.status.phase == "Running", pod.metadata.creation_timestamp or 0), reverse=True)
        for pod in live:
            address = pod.status.host_ip if source == "node" else pod.status.pod_ip
            if address:
                return address
        raise TransientDriverError(
            f"instance {instance.name} has no scheduled pod yet: its {source} address is unknown"
        )

    def share_client_addresses(self, *, instances) -> dict[int, str]:
        """``share_client_address`` of each instance: from the config (``egress``) without a call, else from one list
        of the hub's pods in the cluster (paged). An instance with no scheduled pod yet is left out."""
        source = self.config.get("firewall_address") or self.default_share_client_source()
        if source == "egress":
            return {instance.pk: ComputeDriver.egress_address(self, instance=instance) for instance in instances}
        if source not in ("node", "pod"):
            raise PermanentDriverError(f"pool {self.pool}: firewall_address must be node, pod or egress, not {source}")
        by_namespace: dict[str, list[dict]] = {}
        for pod in self._list_pages("list the hub's pods", self.core.list_pod_for_all_namespaces):
            metadata, status = pod.get("metadata") or {}, pod.get("status")
            if metadata.get("deletionTimestamp") is None and status is not None:
                by_namespace.setdefault(metadata.get("namespace"), []).append(pod)
        addresses = {}
        for instance in instances:
            pods = [pod for pod in by_namespace.get(self.namespace(instance), [])
                    if (pod["metadata"].get("labels") or {}).get(manifests.LABEL) == instance.name]
            # The newest running (else scheduled) pod counts, as in ``share_client_address``.
            pods.sort(key=lambda pod: (pod["status"].get("phase") == "Running",
                                       pod["metadata"].get("creationTimestamp") or ""), reverse=True)
            for pod in pods:
                address = pod["status"].get("hostIP" if source == "node" else "podIP")
                if address:
                    addresses[instance.pk] = address
                    break
        return addresses

    def list_deployments(self) -> list[str]:
        """Namespaces holding a deployment of the hub (one per instance)."""
        found = cloud_call(
            "list the hub's deployments",
            lambda: self.apps.list_deployment_for_all_namespaces(label_selector=MANAGED_BY),
        )
        return sorted({item.metadata.namespace for item in found.items})
