"""The step runner: an Operation is executed as named steps, each recorded when it finishes.

Promises:
- ``operation_enqueue`` sends only the operation's id to django-q2, after the transaction commits;
- ``operation_run`` is safe to call any number of times, from any number of workers: it claims the
  operation with a conditional update (queued, or running with a heartbeat older than the lease — its
  worker died), skips finished steps, and does nothing if another live worker holds it;
- a transient driver error is retried in place with exponential backoff; when the attempts run out,
  or on a permanent error, the plan's ``fail`` releases what the operation took and the operation ends
  ``failed`` with the error for staff to read and retry.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from cells.choices import OperationState
from cells.models import Operation
from cells.states import OPERATION
from provisioning import faults
from provisioning.drivers.base import PermanentDriverError, TransientDriverError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What an operation kind does: its ordered steps, and what happens at the start, end and on failure."""

    steps: list[tuple[str, Callable[[Operation], None]]]
    begin: Callable[[Operation], None]
    succeed: Callable[[Operation], None]
    fail: Callable[[Operation, str], str]  # releases what was taken; returns a note on cleanup

    @property
    def step_names(self) -> list[str]:
        return [name for name, _ in self.steps]


PLANS: dict[str, Plan] = {}


def register_plan(kind: str, plan: Plan) -> None:
    PLANS[str(kind)] = plan


def plan_for(kind: str) -> Plan:
    if not PLANS:
        import provisioning.plans  # noqa: F401  (registers every plan)
    return PLANS[str(kind)]


def operation_create(*, kind: str, requested_by=None, params: dict | None = None, steps=None, **target) -> Operation:
    """Create a queued operation on one target (``instance=``, ``reef=``, ``pool=`` or ``share=``) and enqueue it.

    Raises ``IntegrityError`` when an operation of the same kind is already active on that target.
    """
    operation = Operation.objects.create(
        kind=kind, requested_by=requested_by, params=params or {}, steps=steps or [], **target
    )
    operation_enqueue(operation)
    return operation


def operation_enqueue(operation: Operation) -> None:
    """Hand the operation's id to django-q2 once the current transaction commits."""
    operation_id = operation.pk

    def send():
        from django_q.tasks import async_task

        task_id = async_task(
            "provisioning.tasks.operation_execute",
            operation_id,
            task_name=f"{operation.kind}-{operation_id}",
            group=str(operation.kind),
        )
        if task_id:
            Operation.objects.filter(pk=operation_id).update(task_id=str(task_id))

    transaction.on_commit(send)


def operation_retry(*, operation: Operation, requested_by=None) -> Operation:
    """Queue a failed operation again; its plan resumes from the first unfinished step.

    Raises ``IllegalTransition`` (naming the current state) unless the operation is failed.
    """
    with transaction.atomic():
        OPERATION.change(operation, OperationState.QUEUED, only_from={OperationState.FAILED}, error="")
        operation_enqueue(operation)
    return operation


def _claim(operation_id: int) -> Operation | None:
    """Take the operation for this worker: queued, or running with a stale heartbeat. One caller wins."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.CELLHUB["OPERATION_LEASE_SECONDS"])
    claimed = (
        Operation.objects.filter(pk=operation_id)
        .filter(Q(state=OperationState.QUEUED) | Q(state=OperationState.RUNNING, updated_at__lt=stale))
        .update(
            state=OperationState.RUNNING,
            started_at=Coalesce(F("started_at"), now),
            attempts=F("attempts") + 1,
            updated_at=now,
        )
    )
    return Operation.objects.get(pk=operation_id) if claimed else None


class _Heartbeat:
    """Touches the operation's ``updated_at`` while a step runs, so a live worker is never taken over."""

    def __init__(self, operation_id: int):
        self.operation_id = operation_id
        self.interval = max(settings.CELLHUB["OPERATION_LEASE_SECONDS"] / 3, 0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{operation_id}")

    def _beat(self):
        try:
            while not self.stop.wait(self.interval):
                Operation.objects.filter(pk=self.operation_id, state=OperationState.RUNNING).update(
                    updated_at=timezone.now()
                )
        finally:
            connection.close()

    def __enter__(self):
        # Inside an open test transaction a second connection could block on our own row lock.
        if not connection.in_atomic_block:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def _run_step(operation: Operation, name: str, step: Callable[[Operation], None]) -> None:
    """Run one step, retrying transient errors with exponential backoff; raise the last error when out of tries."""
    attempts = settings.CELLHUB["STEP_ATTEMPTS"]
    delay = settings.CELLHUB["STEP_BACKOFF"]
    point = f"{operation.kind}.{name}"
    for attempt in range(1, attempts + 1):
        try:
            faults.hit(f"{point}.before")
            step(operation)
            faults.hit(f"{point}.after")
            return
        except TransientDriverError as error:
            if attempt == attempts:
                raise PermanentDriverError(f"{name}: gave up after {attempts} attempts: {error}") from error
            logger.warning("operation %s step %s attempt %s failed, retrying: %s", operation.pk, name, attempt, error)
            time.sleep(min(delay * 2 ** (attempt - 1), settings.CELLHUB["STEP_BACKOFF_MAX"]))


def _record_step(operation: Operation, name: str, started_at) -> None:
    entry = {"name": name, "started_at": started_at.isoformat(), "finished_at": timezone.now().isoformat()}
    operation.steps = [*operation.steps, entry]
    Operation.objects.filter(pk=operation.pk).update(steps=operation.steps, updated_at=timezone.now())


def operation_run(operation_id: int) -> str | None:
    """Execute the operation if this worker can claim it; returns its final state, or None if not claimed."""
    operation = _claim(operation_id)
    if operation is None:
        logger.info("operation %s not claimable (finished, or held by a live worker)", operation_id)
        return None
    plan = plan_for(operation.kind)
    try:
        with _Heartbeat(operation.pk):
            plan.begin(operation)
            for name, step in plan.steps:
                if name in operation.done_step_names:
                    continue
                started_at = timezone.now()
                _run_step(operation, name, step)
                _record_step(operation, name, started_at)
            plan.succeed(operation)
        OPERATION.change(operation, OperationState.SUCCEEDED, finished_at=timezone.now(), error="")
    except Exception as error:  # every failure ends in an honest, retryable state
        if not isinstance(error, PermanentDriverError | TransientDriverError):
            logger.exception("operation %s failed unexpectedly", operation.pk)
        message = f"{error.__class__.__name__}: {error}"
        cleanup = plan.fail(operation, message)
        operation.refresh_from_db()
        OPERATION.change(
            operation,
            OperationState.FAILED,
            finished_at=timezone.now(),
            error=message + (f"\n{cleanup}" if cleanup else ""),
        )
    return operation.state


def operation_progress(operation: Operation | None) -> dict:
    """How far an operation is: steps done of its plan, the step under way, and whether it has ended."""
    if operation is None:
        return {"done": 0, "total": 0, "percent": 0, "current": "", "finished": True, "state": "", "error": ""}
    names = plan_for(operation.kind).step_names
    done = [name for name in names if name in operation.done_step_names]
    finished = operation.state in {OperationState.SUCCEEDED, OperationState.FAILED}
    percent = 100 if operation.state == OperationState.SUCCEEDED else round(100 * len(done) / len(names))
    current = "" if finished else next((name for name in names if name not in done), "finishing")
    return {
        "done": len(done),
        "total": len(names),
        "percent": percent,
        "current": current,
        "finished": finished,
        "state": operation.state,
        "error": operation.error if operation.state == OperationState.FAILED else "",
    }
