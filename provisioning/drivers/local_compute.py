"""The local compute pool: each instance is a real OS process — the reference server (``refserver/``) — run by
supervisor's ``supervisord`` apart from the hub (``local_supervisor.py``).

What a Kubernetes Deployment holds, the driver keeps as the instance's spec (``var/compute/<pool>/<namespace>/
spec.json``, readable by the hub's user only: it carries the database URL as a Secret would) and renders into a
supervisord program: the server's command, its environment (``DATABASE_URL``, ``SHARE_PATH``, ``INSTANCE_NAME``,
``SERVER_VERSION``, ``PUBLIC_HOSTNAME``, ``PORT``), ``autostart`` for one replica or not for zero. Deploy, scale,
set_image and delete rewrite the program and apply it through supervisord; ``status`` reports what supervisord
says the process is doing.

The image: any image reference runs the reference server, told its version by its tag. A release marked
``fails_health`` runs it with ``REFSERVER_FAIL_HEALTH=1`` (staff rehearse a canary halt on one machine).

Limits: the instance's memory is enforced as the process's address-space limit (``RLIMIT_AS`` through util-linux
``prlimit``, where it exists); its cpu share is not enforced on this machine (no cgroup is managed here) and is
passed to the server as ``CPU_MILLICORES`` only for display.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml
from django.conf import settings

from cells.models import Release
from provisioning.drivers import manifests
from provisioning.drivers.base import (
    Capabilities,
    ComputeDriver,
    DeploymentSpec,
    DeploymentStatus,
    PermanentDriverError,
    TransientDriverError,
)
from provisioning.drivers.local_paths import var_path
from provisioning.drivers.local_supervisor import (
    BACKOFF,
    FATAL,
    RUNNING,
    START_TIMEOUT_SECONDS,
    STARTING,
    Supervisor,
    write_private,
)

SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifests.yaml"
PRLIMIT = "/usr/bin/prlimit"
LISTEN_ADDRESS = "127.0.0.1"


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def _share_path(endpoint: str) -> str:
    parsed = urlparse(endpoint)
    return unquote(parsed.path) if parsed.scheme == "file" else endpoint


class LocalComputeDriver(ComputeDriver):
    """Deploy = write and apply the instance's supervisord program; status = supervisord's view of the process."""

    provider = "local_compute"
    label = "Local processes"
    clouds = ("local",)
    default_for_clouds = ("local",)
    lead_time_hours = 0.1
    # Its host is this machine, the one there is: a new pool (a top-up) is a new group of supervisord programs under
    # its own folder, ``var/compute/pool<id>/``, derived from its id; nothing in its config names a host.
    host_config_keys = ()
    # Each instance listens on a port of this machine the hub allocates (``DeploymentSpec.port``).
    capabilities = Capabilities(host_ports=True)

    def _root(self) -> Path:
        return var_path("compute", f"pool{self.pool.pk}")

    def supervisor(self) -> Supervisor:
        return Supervisor.default()

    def spec_path(self, instance) -> Path:
        return self._root() / self.namespace(instance) / SPEC_FILE

    def manifest_path(self, instance) -> Path:
        """The Kubernetes manifests of the same deployment (what the ``kubernetes`` driver would apply), rendered
        beside the spec on every change for comparison; nothing reads them to run the process."""
        return self._root() / self.namespace(instance) / MANIFEST_FILE

    def read_manifests(self, instance) -> list[dict]:
        path = self.manifest_path(instance)
        return list(yaml.safe_load_all(path.read_text())) if path.exists() else []

    def provision_pool(self) -> dict:
        return {"external_id": str(self._root()), "config": {}}

    def delete_pool(self) -> None:
        for namespace in self.list_deployments():
            self._remove_program(namespace)
        shutil.rmtree(self._root(), ignore_errors=True)

    # ---- the spec and its program ------------------------------------------------------------------------------

    def read_spec(self, instance) -> DeploymentSpec | None:
        path = self.spec_path(instance)
        if not path.exists():
            return None
        return DeploymentSpec(**json.loads(path.read_text()))

    def _environment(self, spec: DeploymentSpec) -> dict[str, str]:
        fails = Release.objects.filter(version=spec.version, fails_health=True).exists()
        return {
            "DATABASE_URL": spec.database_url,
            "SHARE_ENDPOINT": spec.share_endpoint,
            "SHARE_PATH": _share_path(spec.share_endpoint),
            "INSTANCE_NAME": spec.name,
            "SERVER_VERSION": spec.version,
            "SERVER_IMAGE": f"{spec.image}:{spec.version}",
            "PUBLIC_HOSTNAME": spec.hostname,
            "LISTEN_ADDRESS": LISTEN_ADDRESS,
            "PORT": str(spec.port),
            "CPU_MILLICORES": str(spec.cpu_millicores),
            "MEMORY_MIB": str(spec.memory_mib),
            "REFSERVER_FAIL_HEALTH": "1" if fails else "",
            "PYTHONPATH": str(settings.BASE_DIR),
            "PYTHONUNBUFFERED": "1",
        }

    def _command(self, spec: DeploymentSpec) -> list[str]:
        server = [sys.executable, "-P", "-m", "refserver"]
        if Path(PRLIMIT).exists():
            return [PRLIMIT, f"--as={spec.memory_mib * 1024 * 1024}", "--", *server]
        return server

    def _apply(self, spec: DeploymentSpec) -> None:
        """Save the spec, write its program and apply it; with one replica, wait until the process runs."""
        if spec.port is None:
            raise PermanentDriverError(f"deployment {spec.namespace}: the local runtime needs a port in its spec")
        folder = self._root() / spec.namespace
        folder.mkdir(parents=True, exist_ok=True)
        write_private(folder / SPEC_FILE, json.dumps(dataclasses.asdict(spec), indent=1))
        write_private(folder / MANIFEST_FILE, yaml.safe_dump_all(manifests.render(spec), sort_keys=False))
        supervisor = self.supervisor()
        supervisor.write_program(
            spec.namespace, command=self._command(spec), environment=self._environment(spec), directory=folder,
            autostart=spec.replicas > 0,
        )
        supervisor.update()
        if spec.replicas > 0:
            info = supervisor.info(spec.namespace) or {}
            if info.get("statename") not in {RUNNING, STARTING}:
                supervisor.start(spec.namespace)
            self._wait_until_listening(supervisor, spec)
        else:
            supervisor.stop(spec.namespace)

    def _wait_until_listening(self, supervisor: Supervisor, spec: DeploymentSpec) -> None:
        """Return once the process runs and its port accepts connections; raise ``TransientDriverError`` (with its
        last output) when it exits or does not listen within ``START_TIMEOUT_SECONDS``."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            info = supervisor.info(spec.namespace) or {"statename": "UNKNOWN"}
            if info["statename"] == RUNNING and _listening(LISTEN_ADDRESS, spec.port):
                return
            if info["statename"] not in {RUNNING, STARTING} or time.monotonic() > deadline:
                spawn_error = f": {info['spawnerr']}" if info.get("spawnerr") else ""
                raise TransientDriverError(
                    f"{spec.namespace} is {info['statename']}{spawn_error} and not listening on port {spec.port}; "
                    f"its output: {supervisor.log_tail(spec.namespace) or '(none)'}"
                )
            time.sleep(0.05)

    def _change(self, instance, **changes) -> None:
        spec = self.read_spec(instance)
        if spec is None:
            raise PermanentDriverError(f"instance {instance} has no deployment in pool {self.pool}")
        self._apply(dataclasses.replace(spec, **changes))

    def _remove_program(self, namespace: str) -> None:
        supervisor = self.supervisor()
        if supervisor.program_file(namespace).exists():
            supervisor.stop(namespace)
            supervisor.remove_program(namespace)
            supervisor.update()

    # ---- ComputeDriver -----------------------------------------------------------------------------------------

    def deploy(self, *, spec: DeploymentSpec) -> None:
        """Run the instance as ``spec`` says (its replicas: 1 runs the process, 0 stops it); idempotent. With one
        replica it returns once supervisord reports the process RUNNING (it stayed up a second), else raises
        ``TransientDriverError`` with the process's last output. Needs ``spec.port``."""
        self._apply(spec)

    def delete(self, *, instance) -> None:
        """Stop the process and forget it (program and spec removed); absent is fine. The port is the hub's to
        free."""
        self._remove_program(self.namespace(instance))
        shutil.rmtree(self._root() / self.namespace(instance), ignore_errors=True)

    def status(self, *, instance) -> DeploymentStatus:
        """What the process really does: exists while its program does; ``replicas`` is what the spec asks for
        (0 or 1); ``ready_replicas`` is 1 only while supervisord reports it RUNNING; ``image`` is the image of the
        version it runs; ``detail`` is supervisord's state (STOPPED, EXITED, FATAL, BACKOFF…) and exit status."""
        spec = self.read_spec(instance)
        return self._status(spec, self.supervisor().info(spec.namespace) if spec else None)

    def statuses(self, *, instances) -> dict[int, DeploymentStatus]:
        """``status`` of each instance from one ``getAllProcessInfo`` call to supervisord (and each spec, read from
        this machine's disk)."""
        processes = self.supervisor().all_info()
        statuses = {}
        for instance in instances:
            spec = self.read_spec(instance)
            statuses[instance.pk] = self._status(spec, processes.get(spec.namespace) if spec else None)
        return statuses

    @staticmethod
    def _status(spec: DeploymentSpec | None, info: dict | None) -> DeploymentStatus:
        if spec is None:
            return DeploymentStatus(exists=False)
        image = f"{spec.image}:{spec.version}"
        if info is None:
            return DeploymentStatus(exists=True, replicas=spec.replicas, image=image,
                                    detail="its process is not loaded in the supervisor")
        state = info["statename"]
        detail = f"process {state}"
        if state in {FATAL, BACKOFF} and info.get("spawnerr"):
            detail += f" ({info['spawnerr']})"
        elif state not in {RUNNING, STARTING} and info.get("exitstatus") is not None and info.get("pid") == 0:
            detail += f" (exit status {info['exitstatus']})"
        return DeploymentStatus(exists=True, ready_replicas=1 if state == RUNNING else 0, replicas=spec.replicas,
                                image=image, detail=detail)

    def scale(self, *, instance, replicas: int) -> None:
        """Scale to 0 (the process stopped, autostart off) or 1 (started, autostart on)."""
        self._change(instance, replicas=min(max(replicas, 0), 1))

    def set_image(self, *, instance, image: str) -> None:
        """Run the version named by ``image``'s tag (the process restarts with it when it has a replica)."""
        name, _, version = image.rpartition(":")
        if not name or not version:
            raise PermanentDriverError(f"image {image!r} has no tag naming its version")
        self._change(instance, image=name, version=version)

    def list_deployments(self) -> list[str]:
        return sorted(p.parent.name for p in self._root().glob(f"*/{SPEC_FILE}"))
