"""Kubernetes manifests of one instance, rendered from a ``DeploymentSpec``.

The ``local_compute`` driver writes exactly these to disk; the ``kubernetes`` driver applies them.
Pure functions: the same spec always renders the same manifests.
"""
from __future__ import annotations

from urllib.parse import urlparse

from provisioning.drivers.base import DeploymentSpec

APP_PORT = 8080
LABEL = "cellhub.io/instance"


def _share_volume(spec: DeploymentSpec) -> dict:
    """The pod volume of the instance's share, by the endpoint's scheme."""
    endpoint = urlparse(spec.share_endpoint)
    if endpoint.scheme == "nfs":
        return {"name": "share", "nfs": {"server": endpoint.hostname, "path": endpoint.path or "/"}}
    if endpoint.scheme == "azurefile":
        return {
            "name": "share",
            "azureFile": {"secretName": f"{spec.name}-storage", "shareName": spec.share_name, "readOnly": False},
        }
    return {"name": "share", "hostPath": {"path": endpoint.path or spec.share_endpoint, "type": "Directory"}}


def render(spec: DeploymentSpec) -> list[dict]:
    """Namespace, Secret (and the share's ``<name>-storage`` Secret when it mounts with credentials), Deployment,
    Service and Ingress for one instance. Each lives in the instance's namespace, deleted with it."""
    labels = {LABEL: spec.name, "app.kubernetes.io/managed-by": "cellhub"}
    resources = {
        "requests": {"cpu": f"{spec.cpu_millicores}m", "memory": f"{spec.memory_mib}Mi"},
        "limits": {"cpu": f"{spec.cpu_millicores}m", "memory": f"{spec.memory_mib}Mi"},
    }
    storage_secret = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{spec.name}-storage", "namespace": spec.namespace, "labels": labels},
            "type": "Opaque",
            "stringData": dict(spec.share_credentials),
        }
    ] if spec.share_credentials else []
    probe = {"httpGet": {"path": "/api/health", "port": APP_PORT}, "periodSeconds": 10, "failureThreshold": 6}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": spec.namespace, "labels": labels}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{spec.name}-database", "namespace": spec.namespace, "labels": labels},
            "type": "Opaque",
            "stringData": {"DATABASE_URL": spec.database_url},
        },
        *storage_secret,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
            "spec": {
                "replicas": spec.replicas,
                "selector": {"matchLabels": {LABEL: spec.name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "server",
                                "image": f"{spec.image}:{spec.version}",
                                "ports": [{"containerPort": APP_PORT}],
                                "env": [
                                    {
                                        "name": "DATABASE_URL",
                                        "valueFrom": {
                                            "secretKeyRef": {"name": f"{spec.name}-database", "key": "DATABASE_URL"}
                                        },
                                    },
                                    {"name": "PUBLIC_HOSTNAME", "value": spec.hostname},
                                ],
                                "resources": resources,
                                "livenessProbe": {**probe, "initialDelaySeconds": 60},
                                "readinessProbe": {**probe, "initialDelaySeconds": 10},
                                "volumeMounts": [{"name": "share", "mountPath": "/data"}],
                            }
                        ],
                        "volumes": [_share_volume(spec)],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
            "spec": {"selector": {LABEL: spec.name}, "ports": [{"port": 80, "targetPort": APP_PORT}]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
            "spec": {
                "rules": [
                    {
                        "host": spec.hostname,
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": spec.name, "port": {"number": 80}}},
                                }
                            ]
                        },
                    }
                ]
            },
        },
    ]
