"""A Kubernetes cluster as a compute pool: one namespace per instance, holding what ``manifests.render`` gives.

Pool config (no secrets): ``kubeconfig`` (a path) and ``context``; without ``kubeconfig`` the driver uses
the in-cluster service account when the hub runs in a pod, else ``KUBECONFIG`` / ``~/.kube/config``.
``firewall_address``: which address of an instance its share admits — ``node`` (default), ``pod`` or ``egress``
(``egress_address``: the address every pod leaves the cluster from, their NAT's); see ``share_client_address``.

``deploy`` creates each manifest and, when it exists already (409), patches it with the same manifest, so
a repeat converges and never duplicates. Every call goes through ``cloud_call``.
"""
from __future__ import annotations

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

MANAGED_BY = "app.kubernetes.io/managed-by=cellhub"


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
    host_config_keys = ()
    capabilities = Capabilities()

    def __init__(self, pool, *, api_client: k8s.ApiClient | None = None):
        super().__init__(pool)
        self._api_client = api_client

    @property
    def api_client(self) -> k8s.ApiClient:
        """Raises ``PermanentDriverError`` naming what to set when no cluster config is found."""
        if self._api_client is None:
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
        """A cluster is created outside the hub; this checks it answers and returns its API address."""
        cloud_call(f"reach the cluster of pool {self.pool}", lambda: self.core.list_namespace(limit=1))
        return {"external_id": self.api_client.configuration.host, "config": {}}

    def delete_pool(self) -> None:
        """The cluster outlives the pool row; nothing to delete."""

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

    def list_deployments(self) -> list[str]:
        """Namespaces holding a deployment of the hub (one per instance)."""
        found = cloud_call(
            "list the hub's deployments",
            lambda: self.apps.list_deployment_for_all_namespaces(label_selector=MANAGED_BY),
        )
        return sorted({item.metadata.namespace for item in found.items})
