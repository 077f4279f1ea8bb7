"""The registry of operation plans: what each operation kind does, and which kinds may not overlap.

Plan modules (``provisioning/plans/<kind>.py``) build a ``Plan`` and ``register_plan`` it at import; ``discover``
imports them all once, from ``ProvisioningConfig.ready``. The engine (``provisioning.operations``) reads the
registry and never imports a plan, so plans are free to call the services that queue operations.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import provisioning.plans as plans_package

if TYPE_CHECKING:
    from cells.models import Operation

MINUTES, HOURS = 60, 3600


@dataclass(frozen=True)
class Plan:
    """What an operation kind does: its ordered steps, and what happens at the start, end and on failure.

    ``excludes``: the kinds that may not be queued or running on the same target while one of this kind is (the
    relation is symmetric: a kind also excludes every kind whose plan names it; its own kind always).
    """

    steps: list[tuple[str, Callable[[Operation], None]]]
    begin: Callable[[Operation], None]
    succeed: Callable[[Operation], None]
    fail: Callable[[Operation, str], str]  # releases what was taken; returns a note on cleanup
    excludes: frozenset[str] = frozenset()
    # Seconds one attempt may run before the watchdog requeues it (then fails it), and one call of a step may take
    # before it is abandoned as a transient error (keep it below Q_TIMEOUT, which kills the worker process).
    # Operators override either per kind (or for all with "default") in CELLHUB["OPERATION_TIME_LIMITS"] /
    # CELLHUB["STEP_TIMEOUTS"].
    time_limit: float = 30 * MINUTES
    step_timeout: float = 300.0

    @property
    def step_names(self) -> list[str]:
        return [name for name, _ in self.steps]


PLANS: dict[str, Plan] = {}


def register_plan(kind: str, plan: Plan) -> None:
    """Make ``plan`` the one for operations of ``kind`` (each plan module calls it once, at import)."""
    PLANS[str(kind)] = plan


def discover() -> None:
    """Import every module of ``provisioning.plans`` (each registers its plan). Called once, by the app's ``ready``,
    like the admin's autodiscovery: the engine only reads the registry, so no plan is imported by the engine and
    plans may use the services that create operations."""
    for module in pkgutil.iter_modules(plans_package.__path__):
        if module.name != "registry":
            importlib.import_module(f"{plans_package.__name__}.{module.name}")


def _registered() -> dict[str, Plan]:
    if not PLANS:
        raise LookupError("no operation plans are registered: provisioning's AppConfig.ready() runs discover()")
    return PLANS


def plan_for(kind: str) -> Plan:
    """The plan of ``kind``; a KeyError names a kind without one (a test asserts every kind has one)."""
    return _registered()[str(kind)]


def excluded_kinds(kind: str) -> frozenset[str]:
    """Every kind that may not overlap with ``kind`` on one target: its own, those its plan excludes, and those
    whose plans exclude it."""
    plans, kind = _registered(), str(kind)
    own = {str(excluded) for excluded in plans[kind].excludes} if kind in plans else set()
    return frozenset({kind, *own} | {other for other, plan in plans.items() if kind in plan.excludes})
