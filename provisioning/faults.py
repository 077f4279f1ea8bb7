"""Failpoints: named places in the step runner where staff, chaos drills and tests inject faults.

A failpoint is armed in-process with ``arm()`` or, for a whole process, through the environment:
``CELLHUB_FAILPOINTS="provision.compute.after=hang,provision.dns.before=transient*2"``.
Kinds: ``transient`` (raises TransientDriverError), ``permanent`` (PermanentDriverError), ``hang``
(sleeps until the process is killed — a worker dying mid-step), ``sleep:S`` (sleeps S seconds, then
carries on — a driver call that hangs for a while: the step runner's timeout gives up on it first).
``*N`` fires N times, default once (``*0`` means every time). Disarmed, ``hit()`` costs a dict lookup.
"""
import os
import threading
import time

from provisioning.drivers.base import PermanentDriverError, TransientDriverError

KINDS = ("transient", "permanent", "hang", "sleep")
_lock = threading.Lock()
_armed: dict[str, list] = {}  # point → [kind, remaining, seconds] (remaining 0 = forever)


def arm(point: str, kind: str = "transient", times: int = 1, *, seconds: float = 0.0) -> None:
    """Arm ``point``; ``kind`` may be written ``sleep:S`` (or pass ``seconds``)."""
    kind, _, duration = kind.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; use one of {KINDS}")
    with _lock:
        _armed[point] = [kind, times, float(duration) if duration else seconds]


def disarm_all() -> None:
    with _lock:
        _armed.clear()


def _load_environment() -> None:
    for item in filter(None, os.environ.get("CELLHUB_FAILPOINTS", "").split(",")):
        point, _, spec = item.partition("=")
        kind, _, times = spec.partition("*")
        arm(point.strip(), kind.strip() or "transient", int(times) if times else 1)


def hit(point: str) -> None:
    """Fire the fault armed at ``point``, if any."""
    if not _armed:
        return
    with _lock:
        armed = _armed.get(point)
        if armed is None:
            return
        kind, remaining, seconds = armed
        if remaining == 1:
            del _armed[point]
        elif remaining > 1:
            armed[1] -= 1
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "sleep":
        time.sleep(seconds)
        return
    error = TransientDriverError if kind == "transient" else PermanentDriverError
    raise error(f"injected {kind} fault at {point}")


_load_environment()
