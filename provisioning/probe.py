"""Asking an instance whether it is up: its compute driver's view of its deployment, then the instance itself.

Used by the health pass (provisioning/health.py) and by an upgrade waiting for the new version
(provisioning/plans/upgrade.py). Never changes anything.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import threading
from urllib.parse import urlsplit

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


# The most of an answer a check reads: a health answer is a few bytes of JSON.
ANSWER_LIMIT = 64 * 1024


class HealthClient:
    """HTTP/1.1 GETs over kept-alive connections, a set per thread (a connection never serves two threads at once),
    closed together by ``close``. The standard library's ``http.client``, not ``requests``: a pass makes one GET per
    instance, and ``requests`` spends three times the CPU on each (~250 µs against ~80 µs here), which at 50,000
    instances is most of a pass. No redirect is followed; a reused connection the server closed meanwhile is
    replaced once (a GET is safe to repeat)."""

    def __init__(self):
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def get(self, url: str, headers: dict, timeout: float) -> tuple[int, bytes]:
        """``(status, body)`` (the body cut at ``ANSWER_LIMIT``); raises ``OSError`` or ``http.client.HTTPException``
        (a timeout is an ``OSError``) or ``ValueError`` for a URL it cannot ask."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        key = (parts.scheme, parts.hostname, parts.port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connections = self._local.__dict__.setdefault("connections", {})
        for attempt in (1, 2):
            connection = connections.get(key)
            reused = connection is not None
            if connection is None:
                kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
                connection = connections[key] = kind(parts.hostname, parts.port, timeout=timeout)
                with self._lock:
                    self._opened.append(connection)
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                body = response.read(ANSWER_LIMIT)
                if response.will_close or not response.isclosed():  # closing, or more than the limit left unread
                    connection.close()
                    connections.pop(key, None)
                return response.status, body
            except (OSError, http.client.HTTPException):
                connection.close()
                connections.pop(key, None)
                if not reused or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            for connection in self._opened:
                connection.close()
            self._opened.clear()


def http_findings(request: tuple[str, dict], version: str, *, client: HealthClient | None = None
                  ) -> tuple[dict, list[str]]:
    """Ask the instance itself (``request``: URL and headers) through ``client`` (shared, its connections kept
    alive; default: a new one), within ``HEALTH_HTTP_TIMEOUT``; its details and problems. Never raises for what it
    answers or fails to."""
    url, headers = request
    details: dict = {"url": url}
    problems = []
    own = client is None
    client = client or HealthClient()
    try:
        status, body = client.get(url, headers, settings.CELLHUB["HEALTH_HTTP_TIMEOUT"])
        details["http_status"] = status
        answer = _json_or_empty(body)
        if not 200 <= status < 300:
            reason = f": {answer['reason']}" if answer.get("reason") else ""
            problems.append(f"{url} answered {status}{reason}")
        elif answer.get("version") not in (None, version):
            problems.append(f"{url} reports version {answer['version']}, not {version}")
    except (OSError, http.client.HTTPException, ValueError) as error:
        problems.append(f"{url} did not answer: {error.__class__.__name__}")
    finally:
        if own:
            client.close()
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
