"""Stuck and abandoned work, and staff's overrides: no operation stays queued or running forever.

Every operation state has a time limit (``CELLHUB["OPERATION_TIME_LIMITS"]``, seconds):

- ``queued`` longer than the ``"queued"`` limit (never picked up: the task was lost or no worker runs);
- ``running`` with a heartbeat older than ``OPERATION_LEASE_SECONDS`` (its worker died);
- ``running`` longer than its kind's limit in the current attempt (its worker is stuck).

The scheduled pass (``operations_watch``, every minute) requeues such an operation once — a queued one is handed
to django-q2 again, a running one goes back to queued and is handed again — and, when the same operation is stuck
again, fails it with the reason ("worker lost: no heartbeat since …", "ran past its 30-minute limit", "never picked
up …"); the plan's ``fail`` then releases what it took, exactly as when a step fails. A person retrying it gives
it its one requeue back. Each decision is re-checked under a row lock, so a worker that comes back in between
keeps its operation, and each is audited (actor: the scheduler).

Staff's overrides, both audited by the admin and the API that call them (who and why): cancelling an operation
(``provisioning.operations.operation_cancel``: it ends ``cancelled``, not ``failed``) and ``instance_force_state``
— an instance put into the state staff choose, bypassing the transition table on purpose but still as a conditional
update from the state staff saw.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from cells.audit import SUCCEEDED, audit_record
from cells.choices import CLEANUP_UNFINISHED_STATES, CleanupState, OperationState
from cells.errors import IllegalTransition
from cells.models import Operation
from cells.states import OPERATION
from provisioning.models import OperationWatch
from provisioning.operations import (
    operation_end_from_outside,
    operation_enqueue,
    operation_run_cleanup,
    step_timeout,
    time_limit,
)

logger = logging.getLogger(__name__)

QUEUED_TOO_LONG, HEARTBEAT_LOST, PAST_TIME_LIMIT = "queued_too_long", "heartbeat_lost", "past_time_limit"
# Requeues the watchdog makes before it fails a stuck operation (a person's retry resets the count).
REQUEUES_BEFORE_FAILING = 1


def _limit_text(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}-hour"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}-minute"
    return f"{seconds:g}-second"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _watch(operation: Operation) -> OperationWatch | None:
    try:
        return operation.watch
    except OperationWatch.DoesNotExist:
        return None


def stuck_cause(operation: Operation, now: datetime) -> tuple[str, str] | None:
    """(cause, reason) when ``operation`` is past one of its time limits at ``now``; None when it is not."""
    lease = timedelta(seconds=settings.CELLHUB["OPERATION_LEASE_SECONDS"])
    if operation.state == OperationState.QUEUED:
        limit = time_limit("queued")
        if operation.updated_at < now - timedelta(seconds=limit):
            return QUEUED_TOO_LONG, (
                f"never picked up: queued since {_when(operation.updated_at)}, past its {_limit_text(limit)} limit"
            )
        return None
    if operation.state != OperationState.RUNNING:
        return None
    watch = _watch(operation)
    worker = f" (worker {watch.worker})" if watch and watch.worker else ""
    if operation.updated_at < now - lease:
        return HEARTBEAT_LOST, f"worker lost: no heartbeat since {_when(operation.updated_at)}{worker}"
    limit = time_limit(operation.kind)
    claimed_at = (watch.claimed_at if watch else None) or operation.started_at or operation.created_at
    if claimed_at < now - timedelta(seconds=limit):
        return PAST_TIME_LIMIT, (
            f"ran past its {_limit_text(limit)} limit: running since {_when(claimed_at)}{worker}"
        )
    return None


def stuck_operations(*, now: datetime | None = None) -> list[tuple[Operation, str, str]]:
    """Queued and running operations past a time limit, as (operation, cause, reason); two queries."""
    now = now or timezone.now()
    queued_before = now - timedelta(seconds=time_limit("queued"))
    candidates = list(
        Operation.objects.filter(state=OperationState.QUEUED, updated_at__lt=queued_before).select_related("watch")
    ) + list(Operation.objects.filter(state=OperationState.RUNNING).select_related("watch"))
    found = []
    for operation in candidates:
        cause = stuck_cause(operation, now)
        if cause is not None:
            found.append((operation, *cause))
    return found


def _requeue(operation: Operation, reason: str, now: datetime) -> bool:
    """Queue the stuck operation again and hand it to django-q2; False when it changed meanwhile."""
    with transaction.atomic():
        locked = Operation.objects.select_for_update(of=("self",)).select_related("watch").get(pk=operation.pk)
        if (locked.state, locked.attempts) != (operation.state, operation.attempts) or stuck_cause(locked, now) is None:
            return False
        if locked.state == OperationState.RUNNING:
            OPERATION.change(locked, OperationState.QUEUED, only_from={OperationState.RUNNING})
        else:
            Operation.objects.filter(pk=locked.pk).update(updated_at=now)  # stays queued; its wait starts over
        OperationWatch.objects.get_or_create(operation_id=locked.pk)
        OperationWatch.objects.filter(operation_id=locked.pk).update(
            requeues=F("requeues") + 1, last_requeued_at=now, last_reason=reason
        )
        operation_enqueue(locked)
    audit_record(
        action="operation.requeue", outcome=SUCCEEDED, target=locked, reason=reason,
        details={"kind": str(locked.kind), "attempt": locked.attempts, "from_state": str(operation.state)},
    )
    logger.warning("operation %s requeued: %s", locked.pk, reason, extra={"operation_id": locked.pk})
    return True


def _fail(operation: Operation, reason: str, now: datetime) -> bool:
    """Fail the stuck operation with ``reason`` (its plan's clean-up follows); False when it changed meanwhile."""
    with transaction.atomic():
        locked = Operation.objects.select_for_update(of=("self",)).select_related("watch").get(pk=operation.pk)
        if (locked.state, locked.attempts) != (operation.state, operation.attempts) or stuck_cause(locked, now) is None:
            return False
        OperationWatch.objects.get_or_create(operation_id=locked.pk)
        OperationWatch.objects.filter(operation_id=locked.pk).update(last_reason=reason)
    try:
        operation_end_from_outside(
            operation=locked, reason=reason, expected_state=operation.state, expected_attempts=operation.attempts
        )
    except IllegalTransition:
        return False
    return True


def _settle_cleanups(now: datetime) -> list[int]:
    """Run the clean-ups still owed by operations ended from outside whose worker never came back to them, and free
    a clean-up whose runner died so the next pass runs it again (both read from the operation's own record)."""
    lease = settings.CELLHUB["OPERATION_LEASE_SECONDS"]
    attempts = settings.CELLHUB["STEP_ATTEMPTS"]
    settled = []
    owing = Operation.objects.filter(cleanup_state__in=sorted(str(s) for s in CLEANUP_UNFINISHED_STATES))
    for operation in owing.order_by("id"):
        ended_at = operation.finished_at or operation.updated_at
        if operation.cleanup_state == CleanupState.OWED:
            # A live worker reaches its next step boundary within one step's longest run (every try timed out).
            grace = lease + attempts * (step_timeout(operation.kind) + settings.CELLHUB["STEP_BACKOFF_MAX"])
            if ended_at < now - timedelta(seconds=grace) and operation_run_cleanup(operation.pk):
                settled.append(operation.pk)
        elif operation.cleanup_claimed_at < now - timedelta(seconds=lease + time_limit(operation.kind)):
            Operation.objects.filter(
                pk=operation.pk, cleanup_state=CleanupState.RUNNING, cleanup_claimed_at=operation.cleanup_claimed_at
            ).update(cleanup_state=CleanupState.OWED, cleanup_claimed_at=None)
            logger.warning("the clean-up of operation %s never finished; it runs again", operation.pk)
    return settled


def operations_watch(*, now: datetime | None = None) -> dict[str, list[int]]:
    """The scheduled pass: requeue each stuck operation once, fail it when stuck again, settle owed clean-ups.

    Returns the ids it ``requeued``, ``failed`` and ``cleaned_up``. Safe to run concurrently with itself and with
    workers: every change is re-checked under the operation's row lock.
    """
    now = now or timezone.now()
    summary: dict[str, list[int]] = {"requeued": [], "failed": [], "cleaned_up": []}
    for operation, _cause, reason in stuck_operations(now=now):
        watch = _watch(operation)
        requeues = watch.requeues if watch else 0
        if requeues < REQUEUES_BEFORE_FAILING:
            if _requeue(operation, reason, now):
                summary["requeued"].append(operation.pk)
        else:
            earlier = f" (requeued once already, at {_when(watch.last_requeued_at)})" if watch.last_requeued_at else ""
            if _fail(operation, reason + earlier, now):
                summary["failed"].append(operation.pk)
    summary["cleaned_up"] = _settle_cleanups(now)
    return summary
