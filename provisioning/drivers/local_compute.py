"""The local compute pool: renders each instance's Kubernetes manifests to ``var/compute/<pool>/<namespace>/``.

The files are exactly what the ``kubernetes`` driver applies; on this machine nothing runs them, so
``status`` reports what the manifests ask for (the deployment "exists" while its manifests do).
"""
import shutil
from pathlib import Path

import yaml

from provisioning.drivers import manifests
from provisioning.drivers.base import (
    Capabilities,
    ComputeDriver,
    DeploymentSpec,
    DeploymentStatus,
    PermanentDriverError,
)
from provisioning.drivers.local_paths import var_path, write_atomically

MANIFEST_FILE = "manifests.yaml"


class LocalComputeDriver(ComputeDriver):
    """Deploy = write the manifests; scale and set_image edit the Deployment in place."""

    provider = "local_compute"
    label = "Local manifests"
    clouds = ("local",)
    default_for_clouds = ("local",)
    lead_time_hours = 0.1
    host_config_keys = ()
    capabilities = Capabilities()

    def _root(self) -> Path:
        return var_path("compute", f"pool{self.pool.pk}")

    def manifest_path(self, instance) -> Path:
        return self._root() / self.namespace(instance) / MANIFEST_FILE

    def provision_pool(self) -> dict:
        return {"external_id": str(self._root()), "config": {}}

    def delete_pool(self) -> None:
        shutil.rmtree(self._root(), ignore_errors=True)

    def deploy(self, *, spec: DeploymentSpec) -> None:
        path = self._root() / spec.namespace / MANIFEST_FILE
        write_atomically(path, yaml.safe_dump_all(manifests.render(spec), sort_keys=False))

    def read_manifests(self, instance) -> list[dict]:
        path = self.manifest_path(instance)
        return list(yaml.safe_load_all(path.read_text())) if path.exists() else []

    def _deployment(self, documents: list[dict]) -> dict | None:
        return next((d for d in documents if d["kind"] == "Deployment"), None)

    def _edit_deployment(self, instance, change) -> None:
        documents = self.read_manifests(instance)
        deployment = self._deployment(documents)
        if deployment is None:
            raise PermanentDriverError(f"instance {instance} has no deployment in pool {self.pool}")
        change(deployment)
        write_atomically(self.manifest_path(instance), yaml.safe_dump_all(documents, sort_keys=False))

    def delete(self, *, instance) -> None:
        shutil.rmtree(self.manifest_path(instance).parent, ignore_errors=True)

    def status(self, *, instance) -> DeploymentStatus:
        deployment = self._deployment(self.read_manifests(instance))
        if deployment is None:
            return DeploymentStatus(exists=False)
        replicas = deployment["spec"]["replicas"]
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        return DeploymentStatus(exists=True, ready_replicas=replicas, replicas=replicas, image=image)

    def scale(self, *, instance, replicas: int) -> None:
        self._edit_deployment(instance, lambda d: d["spec"].__setitem__("replicas", replicas))

    def set_image(self, *, instance, image: str) -> None:
        self._edit_deployment(
            instance, lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("image", image)
        )

    def list_deployments(self) -> list[str]:
        return sorted(p.parent.name for p in self._root().glob(f"*/{MANIFEST_FILE}"))
