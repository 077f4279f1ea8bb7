"""Asking an instance whether it is up: its compute driver's view of its deployment, then the instance itself.

Used by the health pass (provisioning/health.py) and by an upgrade waiting for the new version
(provisioning/plans/upgrade.py). Never changes anything.
"""
from __future__ import annotations

import dataclasses
import json
import logging

import urllib3
from django.conf import settings

from cells.choices import Provider
from cells.models import Instance
from provisioning import drivers
from provisioning.drivers.base import DeploymentStatus, DriverError
from provisioning.models import HealthStatus
from provisioning.operations import call_with_timeout
from provisioning.ports import instance_port

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Probe:
    status: str
    detail: str
    details: dict


def _compute_status(instance: Instance):
    compute = drivers.for_pool(instance.compute_pool)
    return call_with_timeout(
        lambda _abandoned: compute.status(instance=instance),
        seconds=settings.CELLHUB["HEALTH_DRIVER_TIMEOUT"], name=f"health status of {instance.name}",
    )


def health_request(instance: Instance, *, port: int | None = None) -> tuple[str, dict] | None:
    """The URL the HTTP check asks and the headers it sends, or None when there is none to ask.

    A local instance is asked on the loopback at its own port, naming itself in ``Host`` (``*.localhost`` names
    do not resolve outside browsers), unless its pool's config names a ``health_url``. ``port`` is the instance's
    port when the caller read it already (0: none), else it is looked up."""
    template = (instance.compute_pool.config or {}).get("health_url")
    port = instance_port(instance) if port is None else port
    if port and instance.compute_pool.provider == Provider.LOCAL_COMPUTE and not template:
        host = f"{instance.hostname}:{port}" if instance.hostname else f"127.0.0.1:{port}"
        return f"http://127.0.0.1:{port}/api/health", {"Host": host}
    if not settings.CELLHUB["HEALTH_HTTP"] or not instance.hostname:
        return None
    if template is None and instance.compute_pool.provider == Provider.LOCAL_COMPUTE:
        return None  # a local instance without a port has no server to ask
    return (template or settings.CELLHUB["HEALTH_URL"]).format(hostname=instance.hostname), {}


def health_url(instance: Instance) -> str | None:
    """The URL the HTTP check asks, or None when there is none to ask."""
    request = health_request(instance)
    return request[0] if request else None


def unknown_probe(instance: Instance, error: Exception) -> Probe:
    """What a check finds when the compute driver could not answer (``unknown``)."""
    if isinstance(error, DriverError):
        return Probe(HealthStatus.UNKNOWN, f"compute pool {instance.compute_pool} did not answer: {error}", {})
    return Probe(HealthStatus.UNKNOWN, f"the status could not be read: {error.__class__.__name__}: {error}", {})


def status_findings(status: DeploymentStatus, version: str) -> tuple[dict, list[str]]:
    """The details and the problems the compute driver's view of a deployment shows, for an instance that should
    run ``version``."""
    details = {"exists": status.exists, "replicas": status.replicas, "ready_replicas": status.ready_replicas,
               "image": status.image}
    if status.detail:
        details["runtime"] = status.detail
    problems = []
    if not status.exists:
        problems.append("its deployment is missing")
    elif status.replicas < 1:
        problems.append("its deployment is scaled to 0 replicas")
    elif status.ready_replicas < 1:
        problems.append(f"0 of {status.replicas} replicas are ready" + (f": {status.detail}" if status.detail else ""))
    if status.exists and status.image.rpartition(":")[2] != version:
        problems.append(f"it runs {status.image or 'no image'}, not version {version}")
    return details, problems


def http_pool(size: int = 1) -> urllib3.PoolManager:
    """A connection pool for HTTP checks: keeps up to ``size`` connections per host alive between checks. urllib3
    (what ``requests`` is built on) rather than ``requests`` itself: at 50,000 checks a pass its per-request cost is
    less than half ``requests``'s, and a pass is mostly this."""
    return urllib3.PoolManager(num_pools=max(size, 10), maxsize=size, retries=False)


def http_findings(request: tuple[str, dict], version: str, *, pool: urllib3.PoolManager | None = None
                  ) -> tuple[dict, list[str]]:
    """Ask the instance itself (``request``: URL and headers) through ``pool`` (shared, its connections reused;
    default: a new one), no redirect followed, within ``HEALTH_HTTP_TIMEOUT``; its details and problems. Never
    raises for what it answers or fails to."""
    url, headers = request
    details: dict = {"url": url}
    problems = []
    try:
        response = (pool or http_pool()).request(
            "GET", url, headers=headers, timeout=settings.CELLHUB["HEALTH_HTTP_TIMEOUT"], redirect=False,
        )
        details["http_status"] = response.status
        answer = _json_or_empty(response.data)
        if not 200 <= response.status < 300:
            reason = f": {answer['reason']}" if answer.get("reason") else ""
            problems.append(f"{url} answered {response.status}{reason}")
        elif answer.get("version") not in (None, version):
            problems.append(f"{url} reports version {answer['version']}, not {version}")
    except (urllib3.exceptions.HTTPError, OSError) as error:
        problems.append(f"{url} did not answer: {error.__class__.__name__}")
    return details, problems


def probe_result(status: DeploymentStatus, details: dict, problems: list[str]) -> Probe:
    """The probe's verdict from everything found: unhealthy with every problem named, else healthy."""
    if problems:
        return Probe(HealthStatus.UNHEALTHY, "; ".join(problems), details)
    return Probe(HealthStatus.HEALTHY, f"{status.ready_replicas} of {status.replicas} replicas ready", details)


def instance_probe(instance: Instance, *, version: str | None = None) -> Probe:
    """Ask the driver (and the instance's health URL) about the instance; never raises for what the instance or its
    cloud does: a driver that cannot answer gives ``unknown``. ``version`` is the version it should run (default:
    the instance's recorded one; an upgrade asks for the new one before recording it)."""
    version = version or instance.server_version
    try:
        status = _compute_status(instance)
    except Exception as error:  # a driver's own bug or a damaged record too: unknown, never a crashed pass
        if not isinstance(error, DriverError):
            logger.exception("health status of %s could not be read", instance.name)
        return unknown_probe(instance, error)
    details, problems = status_findings(status, version)
    request = health_request(instance) if not problems else None
    if request:
        http_details, problems = http_findings(request, version)
        details.update(http_details)
    return probe_result(status, details, problems)


def _json_or_empty(data: bytes) -> dict:
    try:
        answer = json.loads(data)
    except ValueError:  # UnicodeDecodeError is one
        return {}
    return answer if isinstance(answer, dict) else {}
