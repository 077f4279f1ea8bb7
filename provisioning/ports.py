"""Ports of this machine for instances of local compute pools: allocated without collisions, freed on the way out.

The range is ``CELLHUB["LOCAL_PORTS"]`` (``CELLHUB_LOCAL_PORTS``, e.g. ``20000-20999``). A port is taken when the
database accepts the instance's ``InstancePort`` row (``port`` is unique, so two workers never both get one) and
nothing on the machine listens on it at that moment; it is freed by deleting the row.
"""
from __future__ import annotations

import socket

from django.conf import settings
from django.db import IntegrityError, transaction

from cells.choices import InstanceState
from cells.models import Instance
from provisioning.drivers.base import PermanentDriverError
from provisioning.models import InstancePort


def port_range() -> range:
    low, high = settings.CELLHUB["LOCAL_PORTS"]
    return range(low, high + 1)


def port_is_free(port: int, address: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``address:port`` now (a port in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


_HOST_PORT = Instance.host_port.related


def instance_port(instance: Instance) -> int | None:
    """The instance's port, or None when it has none: from ``instance`` itself when the query that loaded it joined
    its port (``select_related("host_port")``: no query), else looked up."""
    if _HOST_PORT.is_cached(instance):
        row = _HOST_PORT.get_cached_value(instance)
        return row.port if row is not None else None
    return InstancePort.objects.filter(instance_id=instance.pk).values_list("port", flat=True).first()


def instance_port_allocate(*, instance: Instance) -> int:
    """The instance's port, allocated on first call (idempotent: a repeat returns the same port).

    Takes the lowest port of the range that no instance holds and nothing listens on. Raises
    ``PermanentDriverError`` when the range is used up. One query reads the ports held (the instance's own among
    them, unless it was loaded with its port), one ``INSERT`` takes the new one; ``instance`` then carries its port.
    """
    if _HOST_PORT.is_cached(instance) and (existing := instance_port(instance)) is not None:
        return existing
    held = list(InstancePort.objects.values_list("port", "instance_id"))
    mine = next((port for port, owner in held if owner == instance.pk), None)
    if mine is not None:
        return mine
    taken = {port for port, _ in held}
    for port in port_range():
        if port in taken or not port_is_free(port):
            continue
        try:
            with transaction.atomic():
                row = InstancePort.objects.create(instance=instance, port=port)
            _HOST_PORT.set_cached_value(instance, row)
            return port
        except IntegrityError:
            existing = InstancePort.objects.filter(instance_id=instance.pk).first()
            if existing is not None:  # a concurrent run of the same step won
                _HOST_PORT.set_cached_value(instance, existing)
                return existing.port
            continue  # another instance took this port meanwhile: try the next
    raise PermanentDriverError(
        f"no free port left in {port_range().start}-{port_range().stop - 1} for {instance.name} (CELLHUB_LOCAL_PORTS)"
    )


def instance_port_release(*, instance: Instance) -> None:
    """Free the instance's port (idempotent)."""
    InstancePort.objects.filter(instance_id=instance.pk).delete()


def instance_address(instance: Instance, *, port: int | None = None) -> str:
    """Where the instance answers: ``http://<hostname>:<port>/`` on a local runtime, ``https://<hostname>/`` behind
    a cluster's ingress; empty while it has no hostname and once it is decommissioned (its address is gone).
    ``port`` is the instance's port when the caller knows it already (0: none), else it is looked up."""
    if not instance.hostname or instance.state == InstanceState.DECOMMISSIONED:
        return ""
    port = instance_port(instance) if port is None else port
    return f"http://{instance.hostname}:{port}/" if port else f"https://{instance.hostname}/"
