"""The step runner: an Operation is executed as named steps, each recorded when it finishes.

Promises:
- ``operation_enqueue`` sends only the operation's id to django-q2, after the transaction commits;
- ``operation_run`` is safe to call any number of times, from any number of workers: it claims the
  operation with a conditional update (queued, or running with a heartbeat older than the lease — its
  worker died), skips finished steps, and does nothing if another live worker holds it;
- a claim is one attempt (``Operation.attempts``): the worker records each finished step (and ends the operation)
  only while it is still running under its attempt — that conditional write, like the claim, is the check before
  the next step, and a retry of a step asks again — so a worker whose operation was cancelled,
  failed or requeued by the watchdog stops at its next step boundary and never writes over another's run;
- an operation's steps run one after another in one thread of their own (``StepThread``) on one database connection,
  opened once per run, never one per step;
- each call of a step runs under a time limit (``CELLHUB["STEP_TIMEOUTS"]``): a call that does not return in time
  is abandoned and counts as a transient error. Python cannot kill a thread, so the abandoned call may still finish
  later; steps are idempotent, so the retry that follows (or a later run) is safe, and a resource a late call
  makes after the operation failed is what the reconciler reports as an orphan;
- a transient driver error is retried in place with exponential backoff; when the attempts run out,
  or on a permanent error, the plan's ``fail`` releases what the operation took and the operation ends
  ``failed`` with the error for staff to read and retry;
- kinds that must not overlap never do: each plan declares the kinds it ``excludes`` on the same target (as
  Pulp's exclusive resources), and ``operation_create`` — the one place operations are made, with its batch form
  ``operations_create_for_instances`` (a rollout's wave) — refuses with ``OperationInProgress`` while a conflicting
  one is queued or running, deciding under the target's row lock so two concurrent requests can't both pass (table
  below); ``operation_retry`` keeps the same rule;
- an operation ended from outside is ``cancelled`` (``operation_cancel``, staff) or ``failed`` (the watchdog) at
  once with the reason; the clean-up it then owes (its plan's ``fail``, the release of what it took) is on its own
  record (``cleanup_state``) and runs exactly once — at once when no live worker holds it, else by that worker at
  its next step boundary (or by the watchdog if that worker dies first);
- every claim and every end is in the audit log, and every log line written during a run carries the operation's id.

Which kinds exclude which on one instance (x: never at the same time; the same kind twice is always excluded):

    ============  =========  ======  =======  =======  ====  =====  ============
    asked ↓ / in  provision  backup  restore  upgrade  stop  start  decommission
    ============  =========  ======  =======  =======  ====  =====  ============
    provision     x          x       x        x        x     x      x
    backup        x          x       x        .        .     .      x
    restore       x          x       x        x        x     x      x
    upgrade       x          .       x        x        x     x      x
    stop          x          .       x        x        x     x      x
    start         x          .       x        x        x     x      x
    decommission  x          x       x        x        x     x      x
    ============  =========  ======  =======  =======  ====  =====  ============

Why: a provision or decommission makes or destroys everything the others act on. A restore switches the
instance's database and redeploys its compute: a backup taken meanwhile may copy the database being replaced or
a half-restored share, and an upgrade, stop or start would race its redeploy. An upgrade patches the image and may
migrate the database: a stop/start would fight its health wait and its rollback. A stop and a start at once leave
the state to whoever ends last. A backup only reads (a consistent snapshot of the database, a copy of the share), so
it may run during an upgrade (which takes its own pre-upgrade backup), a stop or a start. Two backups are one
operation (a queued backup takes on the second kind). Operations on a reef, pool or share (top-up, replace, scrub)
only exclude their own kind on the same target, except a retire, which deletes what a top-up, replace or scrub of its
pool works on: it excludes those three on the pool (and ``pool_retire`` / ``share_scrub`` refuse a scrub of one of
its shares, whose target is the share, under the pool's row lock).
"""
from __future__ import annotations

import contextvars
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, CharField, F, Q, TextField, Value, When
from django.db.models.functions import Coalesce, Concat
from django.utils import timezone

from cells.audit import FAILED, SUCCEEDED, audit_record, audit_record_many
from cells.choices import (
    CLEANUP_UNFINISHED_STATES,
    OPERATION_ACTIVE_STATES,
    OPERATION_FINAL_STATES,
    OPERATION_RETRYABLE_STATES,
    CleanupState,
    OperationState,
)
from cells.errors import IllegalTransition, OperationInProgress, Refused
from cells.models import OPERATION_TARGETS, Instance, Operation
from cells.states import OPERATION
from provisioning import faults
from provisioning.drivers.base import PermanentDriverError, TransientDriverError
from provisioning.logs import log_context
from provisioning.models import OperationWatch
from provisioning.notifications import operation_failure_notify
from provisioning.plans.registry import excluded_kinds, plan_for

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _target_of(target: dict) -> tuple[str, object]:
    (field, obj), = ((field, obj) for field, obj in target.items() if field in OPERATION_TARGETS and obj is not None)
    return field, obj


def operation_in_the_way(*, kind: str, ignore: Operation | None = None, **target) -> Operation | None:
    """The oldest queued or running operation on the target (``instance=``, ``reef=``, ``pool=`` or ``share=``)
    whose kind may not overlap with ``kind``; None when there is none. ``ignore``: an operation that does not count
    (the one whose failure queues this one). Exact only while the caller holds the target's row lock."""
    field, obj = _target_of(target)
    active = Operation.objects.filter(
        **{f"{field}_id": obj.pk}, kind__in=sorted(excluded_kinds(kind)),
        state__in=sorted(str(s) for s in OPERATION_ACTIVE_STATES),
    )
    if ignore is not None:
        active = active.exclude(pk=ignore.pk)
    return active.order_by("created_at", "id").first()


def operation_refuse_conflicts(*, kind: str, ignore: Operation | None = None, **target) -> None:
    """Lock the target's row (in the caller's transaction) and raise ``OperationInProgress`` naming the operation in
    the way when one that excludes ``kind`` is queued or running on it. Must run inside ``transaction.atomic``: the
    lock is held until the caller's transaction ends, so a second request waits for it and then sees the first's
    operation — two can't both pass."""
    field, obj = _target_of(target)
    type(obj).objects.select_for_update().filter(pk=obj.pk).values_list("pk", flat=True).first()
    blocking = operation_in_the_way(kind=kind, ignore=ignore, **{field: obj})
    if blocking is not None:
        raise OperationInProgress(blocking, wanted=str(kind))


# How long an operation may wait to be picked up before the watchdog hands it to django-q2 again.
QUEUED_TIME_LIMIT = 30 * 60


def time_limit(kind: str) -> float:
    """Seconds an operation of ``kind`` may run in one attempt (``"queued"``: may wait to be picked up): the
    operator's override for the kind, else their ``"default"``, else what the kind's plan declares."""
    overrides = settings.CELLHUB["OPERATION_TIME_LIMITS"]
    declared = QUEUED_TIME_LIMIT if str(kind) == "queued" else plan_for(kind).time_limit
    return float(overrides.get(str(kind), declared if str(kind) == "queued" else overrides.get("default", declared)))


def step_timeout(kind: str) -> float:
    """Seconds one call of a step of an operation of ``kind`` may take before it is abandoned: the operator's
    override for the kind, else their ``"default"``, else what the kind's plan declares."""
    overrides = settings.CELLHUB["STEP_TIMEOUTS"]
    return float(overrides.get(str(kind), overrides.get("default", plan_for(kind).step_timeout)))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _describe(operation: Operation) -> str:
    target = operation.target
    return f"{operation.kind} #{operation.pk}" + (f" of {target._meta.model_name} {target}" if target else "")


def _audit(operation: Operation, action: str, outcome: str = SUCCEEDED, reason: str = "", actor=None, **details):
    audit_record(
        action=action, outcome=outcome, target=operation, target_label=_describe(operation), reason=reason,
        actor=actor, details={"kind": str(operation.kind), "attempt": operation.attempts, **details},
    )


def operation_create(
    *, kind: str, requested_by=None, params: dict | None = None, steps=None, follows: Operation | None = None,
    **target,
) -> Operation:
    """Create a queued operation on one target (``instance=``, ``reef=``, ``pool=`` or ``share=``) and enqueue it
    once the transaction commits.

    Raises ``OperationInProgress`` (naming the operation in the way: its id, kind and state) while an operation
    whose kind excludes ``kind`` (see the table above; the same kind always) is queued or running on that target;
    decided under the target's row lock, in the transaction that inserts the row. ``follows``: the operation whose
    failure queues this one (an upgrade's rollback queues a restore while it still runs); it is not in the way.
    """
    with transaction.atomic():
        operation_refuse_conflicts(kind=kind, ignore=follows, **target)
        operation = Operation.objects.create(
            kind=kind, requested_by=requested_by, params=params or {}, steps=steps or [], **target
        )
        _audit(operation, "operation.create", actor=requested_by)
        operation_enqueue(operation)
    return operation


def operations_create_for_instances(
    *, kind: str, instance_ids: list[int], allowed_states, requested_by=None, params: dict | None = None,
) -> tuple[dict[int, Operation], dict[int, str]]:
    """``operation_create`` for many instances at once, in a constant number of statements whatever their number:
    the same rule (an instance with a queued or running operation whose kind excludes ``kind`` is refused, decided
    under its row lock), the same audit, one enqueue after commit for them all.

    Instances not in ``allowed_states`` (read under the lock) are refused too. Returns (operations made, by instance
    id; the reason each other instance was refused, by id). Must run inside ``transaction.atomic``.
    """
    if not instance_ids:
        return {}, {}
    allowed = sorted(str(state) for state in allowed_states)
    locked = (
        Instance.objects.select_for_update(of=("self",)).filter(pk__in=instance_ids).order_by("pk")
        .values_list("pk", "state", "name")
    )
    current, names = {}, {}
    for pk, state, name in locked:
        current[pk], names[pk] = state, name
    refused = {pk: f"instance is {state}" for pk, state in current.items() if state not in allowed}
    refused.update({pk: "instance is gone" for pk in instance_ids if pk not in current})
    in_the_way = (
        Operation.objects.filter(
            instance_id__in=[pk for pk in current if pk not in refused], kind__in=sorted(excluded_kinds(kind)),
            state__in=sorted(str(s) for s in OPERATION_ACTIVE_STATES),
        ).order_by("instance_id", "created_at", "id").values_list("instance_id", "pk", "kind", "state")
    )
    for instance_id, pk, other_kind, state in in_the_way:
        refused.setdefault(instance_id, f"{other_kind} #{pk} is {state} on it")
    made = Operation.objects.bulk_create([
        Operation(kind=kind, requested_by=requested_by, params=params or {}, steps=[], instance_id=pk)
        for pk in instance_ids if pk not in refused
    ])
    audit_record_many([
        {"action": "operation.create", "target": operation, "actor": requested_by,
         "target_label": f"{kind} #{operation.pk} of instance {names[operation.instance_id]}",
         "details": {"kind": str(kind), "attempt": 0}}
        for operation in made
    ])
    operations_enqueue(made)
    return {operation.instance_id: operation for operation in made}, refused


def operations_enqueue(operations: list[Operation]) -> None:
    """``operation_enqueue`` for many: their ids go to django-q2 once the transaction commits, and their task ids
    are written back in one ``UPDATE``."""
    if not operations:
        return
    sent = [(operation.pk, str(operation.kind)) for operation in operations]

    def send():
        from django_q.tasks import async_task

        task_ids = {}
        for operation_id, kind in sent:
            task_id = async_task(
                "provisioning.tasks.operation_execute", operation_id, task_name=f"{kind}-{operation_id}", group=kind,
            )
            if task_id:
                task_ids[operation_id] = str(task_id)
        if task_ids:
            Operation.objects.filter(pk__in=list(task_ids)).update(
                task_id=Case(*(When(pk=pk, then=Value(task_id)) for pk, task_id in task_ids.items()),
                             output_field=CharField())
            )

    transaction.on_commit(send)


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
    """Queue a failed or cancelled operation again; its plan resumes from the first unfinished step.

    Raises ``IllegalTransition`` (naming the current state) unless the operation is failed or cancelled and the
    clean-up it owed (after a cancel or the watchdog) has finished, and ``OperationInProgress`` while an operation
    that excludes its kind is queued or running on its target (as ``operation_create``). A person queuing it again
    gives the watchdog its one requeue back.
    """
    with transaction.atomic():
        state, cleanup = Operation.objects.filter(pk=operation.pk).values_list("state", "cleanup_state").get()
        if cleanup in CLEANUP_UNFINISHED_STATES:
            raise IllegalTransition(operation, f"{state} and still cleaning up", OperationState.QUEUED)
        if state in OPERATION_RETRYABLE_STATES:
            field = next(field for field in OPERATION_TARGETS if getattr(operation, f"{field}_id") is not None)
            operation_refuse_conflicts(kind=operation.kind, ignore=operation, **{field: operation.target})
        OPERATION.change(
            operation, OperationState.QUEUED, only_from=OPERATION_RETRYABLE_STATES, error="",
            cleanup_state=CleanupState.NONE, cleanup_claimed_at=None, cleanup_error="",
        )
        OperationWatch.objects.filter(operation_id=operation.pk).update(requeues=0)
        operation_enqueue(operation)
    return operation


def _claim(operation_id: int) -> Operation | None:
    """Take the operation for this worker: queued, or running with a stale heartbeat. One caller wins; the claim, its
    watch row and its audit row (``operation.start``) are one transaction."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.CELLHUB["OPERATION_LEASE_SECONDS"])
    with transaction.atomic():
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
        if not claimed:
            return None
        OperationWatch.objects.bulk_create(  # one upsert
            [OperationWatch(operation_id=operation_id, claimed_at=now, worker=worker_name())],
            update_conflicts=True, unique_fields=["operation"], update_fields=["claimed_at", "worker"],
        )
        # The instance too, with its owner and region (the plans read them): one query for all.
        operation = Operation.objects.select_related("instance__owner", "instance__region").get(pk=operation_id)
        _audit(operation, "operation.start", worker=worker_name())
    return operation


class _Heartbeat:
    """Touches the operation's ``updated_at`` while a step runs, so a live worker is never taken over.

    It beats only for this worker's attempt: once the operation was requeued and claimed again, or ended from
    outside, a worker still busy with an abandoned call no longer keeps it alive.
    """

    def __init__(self, operation_id: int, attempt: int):
        self.operation_id = operation_id
        self.attempt = attempt
        self.interval = max(settings.CELLHUB["OPERATION_LEASE_SECONDS"] / 3, 0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{operation_id}")

    def _beat(self):
        try:
            while not self.stop.wait(self.interval):
                Operation.objects.filter(
                    pk=self.operation_id, state=OperationState.RUNNING, attempts=self.attempt
                ).update(updated_at=timezone.now())
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


class CallTimedOut(TransientDriverError):
    """A call did not return within its time limit and was abandoned (it may still finish on its own)."""


class StepThread:
    """Runs calls one after another in one thread of its own, each under a time limit, on one database connection
    of its own: opened by the first call that needs it, closed when ``close`` ends the thread. An operation's steps
    share one, so a step costs no new connection.

    A call that overruns its limit is abandoned with its thread (Python cannot stop a thread): that thread ends, and
    closes its connection, once the call returns; the next call gets a fresh thread. Each call runs with the caller's
    log context (``contextvars``) and its thread carries the call's name.
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._calls: queue.SimpleQueue | None = None

    def call(self, work: Callable[[threading.Event], T], *, seconds: float | None, name: str) -> T:
        """``work(abandoned)``'s result, or ``CallTimedOut`` after ``seconds`` (None: no limit); ``abandoned`` is set
        when the caller stops waiting, so work that has not begun its side effect yet can skip it."""
        if self._thread is None:
            self._calls = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._serve, args=(self._calls,), daemon=True, name=name)
            self._thread.start()
        self._thread.name = name
        abandoned, done, outcome = threading.Event(), threading.Event(), {}
        self._calls.put((contextvars.copy_context(), work, abandoned, outcome, done))
        if not done.wait(seconds or None):
            abandoned.set()
            self._calls.put(None)  # that thread ends once the abandoned call returns
            self._thread = self._calls = None
            raise CallTimedOut(f"{name} timed out after {seconds:g}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def close(self) -> None:
        """End the thread (it is idle: every call it was given has returned) and close its connection."""
        if self._thread is not None:
            self._calls.put(None)
            self._thread.join()
            self._thread = self._calls = None

    @staticmethod
    def _serve(calls: queue.SimpleQueue) -> None:
        try:
            while (item := calls.get()) is not None:
                context, work, abandoned, outcome, done = item
                try:
                    outcome["value"] = context.run(work, abandoned)
                except BaseException as error:  # handed to the waiting thread
                    outcome["error"] = error
                finally:
                    if connection.errors_occurred:  # a broken connection is not handed to the next call
                        connection.close_if_unusable_or_obsolete()
                    done.set()
        finally:
            connection.close()


def call_with_timeout(
    work: Callable[[threading.Event], T], *, seconds: float | None, name: str, runner: StepThread | None = None,
) -> T:
    """Run ``work(abandoned)`` and return its result, giving up after ``seconds`` with ``CallTimedOut``.

    The call runs in ``runner``'s thread (see ``StepThread``), or in a thread of its own with a database connection
    of its own, closed when it ends; ``abandoned`` is set when the caller stops waiting, so work that has not begun
    its side effect yet can skip it. Python cannot stop the thread: an abandoned call may finish later. Inside an
    open transaction (a test's, or a caller's that the call must see) the call runs inline, without a limit.
    """
    if not seconds or connection.in_atomic_block:
        return work(threading.Event())
    if runner is not None:
        return runner.call(work, seconds=seconds, name=name)
    runner = StepThread()
    try:
        return runner.call(work, seconds=seconds, name=name)
    finally:
        runner.close()


class _LostClaim(Exception):
    """This worker's attempt no longer holds the operation (cancelled, failed or requeued from outside)."""


def _holding(operation: Operation) -> bool:
    return Operation.objects.filter(
        pk=operation.pk, state=OperationState.RUNNING, attempts=operation.attempts
    ).exists()


def _run_step(operation: Operation, name: str, step: Callable[[Operation], None], runner: StepThread) -> None:
    """Run one step in ``runner``'s thread, retrying transient errors (a timed-out call is one) with exponential
    backoff; raise the last error when out of tries, or ``_LostClaim`` when the operation was taken from this worker
    between tries."""
    attempts = settings.CELLHUB["STEP_ATTEMPTS"]
    delay = settings.CELLHUB["STEP_BACKOFF"]
    point = f"{operation.kind}.{name}"
    timeout = step_timeout(operation.kind)

    def work(abandoned: threading.Event) -> None:
        faults.hit(f"{point}.before")
        if abandoned.is_set():
            return  # given up on before the step began: never start it late
        step(operation)
        faults.hit(f"{point}.after")

    for attempt in range(1, attempts + 1):
        if attempt > 1 and not _holding(operation):
            raise _LostClaim
        try:
            call_with_timeout(work, seconds=timeout, name=f"step {name} of {operation.kind} #{operation.pk}",
                              runner=runner)
            return
        except TransientDriverError as error:
            if attempt == attempts:
                raise PermanentDriverError(f"{name}: gave up after {attempts} attempts: {error}") from error
            logger.warning(
                "operation %s step %s attempt %s failed, retrying: %s", operation.pk, name, attempt, error,
                extra={"step": name, "step_attempt": attempt},
            )
            time.sleep(min(delay * 2 ** (attempt - 1), settings.CELLHUB["STEP_BACKOFF_MAX"]))


def _step_entry(name: str, started_at) -> dict:
    return {"name": name, "started_at": started_at.isoformat(), "finished_at": timezone.now().isoformat()}


def _record_step(operation: Operation, name: str, started_at) -> None:
    """Record a finished step, only while this worker's attempt still holds the operation (else ``_LostClaim``)."""
    steps = [*operation.steps, _step_entry(name, started_at)]
    recorded = Operation.objects.filter(
        pk=operation.pk, state=OperationState.RUNNING, attempts=operation.attempts
    ).update(steps=steps, updated_at=timezone.now())
    if not recorded:
        raise _LostClaim
    operation.steps = steps


def _end(
    operation: Operation, state: str, error: str = "", *, then: Callable[[], None] | None = None,
    last_step: dict | None = None,
) -> bool:
    """End this worker's attempt in ``state``; False (nothing changed) when the attempt no longer holds it.

    ``then`` (the plan's ``succeed``) runs in the same transaction, under the operation's row lock: what it changes
    (the instance now running, say), the operation's end and its audit row are seen together or not at all. The end
    is the conditional update that takes the lock (running under this attempt → ``state``, the state machine's legal
    change), so one statement both checks the hold and ends it; ``last_step`` (the record of the step just finished)
    is written by that same statement: the last step boundary is the end.
    """
    assert OPERATION.can(OperationState.RUNNING, state)
    now = timezone.now()
    steps = operation.steps if last_step is None else [*operation.steps, last_step]
    changes = {"state": state, "finished_at": now, "error": error, "updated_at": now}
    if last_step is not None:
        changes["steps"] = steps
    with transaction.atomic():
        ended = Operation.objects.filter(
            pk=operation.pk, state=OperationState.RUNNING, attempts=operation.attempts
        ).update(**changes)
        if not ended:
            return False
        if then is not None:
            then()
        operation.state, operation.finished_at, operation.error, operation.updated_at = state, now, error, now
        operation.steps = steps
        outcome = SUCCEEDED if state == OperationState.SUCCEEDED else FAILED
        _audit(operation, "operation.end", outcome, reason=error, state=str(state), steps=operation.done_step_names)
    logger.log(
        logging.INFO if outcome == SUCCEEDED else logging.WARNING, "operation %s %s%s", operation.pk, state,
        f": {error}" if error else "",
    )
    return True


def operation_run(operation_id: int) -> str | None:
    """Execute the operation if this worker can claim it; returns its state when this worker lets it go, or None
    if it could not claim it."""
    operation = _claim(operation_id)
    if operation is None:
        logger.info("operation %s not claimable (finished, or held by a live worker)", operation_id)
        return None
    plan = plan_for(operation.kind)
    instance = operation.instance.name if operation.instance_id else None
    runner = StepThread()  # the steps' calls share its thread and its one database connection
    try:
        with log_context(operation_id=operation.pk, operation_kind=str(operation.kind), instance=instance):
            logger.info("operation %s attempt %s started on %s", operation.pk, operation.attempts, worker_name())
            try:
                last_step = None  # the last step's record, written by the end's own statement
                with _Heartbeat(operation.pk, operation.attempts):
                    plan.begin(operation)
                    todo = [(name, step) for name, step in plan.steps if name not in operation.done_step_names]
                    for number, (name, step) in enumerate(todo, start=1):
                        # No separate check of the hold before a step: the claim a moment ago, then each step's
                        # conditional record, confirmed it (a cancel in between is met at the next record, as one
                        # arriving during the step is, or at the end).
                        started_at = timezone.now()
                        logger.info("step %s started", name, extra={"step": name})
                        _run_step(operation, name, step, runner)
                        if number < len(todo):
                            _record_step(operation, name, started_at)
                        else:
                            last_step = _step_entry(name, started_at)
                        seconds = (timezone.now() - started_at).total_seconds()
                        logger.info("step %s finished in %.2fs", name, seconds, extra={"step": name})
                if not _end(operation, OperationState.SUCCEEDED, then=lambda: plan.succeed(operation),
                            last_step=last_step):
                    return _let_go(operation)
            except _LostClaim:
                return _let_go(operation)
            except Exception as error:  # every failure ends in an honest, retryable state
                if not isinstance(error, PermanentDriverError | TransientDriverError):
                    logger.exception("operation %s failed unexpectedly", operation.pk)
                message = f"{error.__class__.__name__}: {error}"
                if not _holding(operation):
                    return _let_go(operation)
                cleanup = plan.fail(operation, message)
                operation.refresh_from_db()
                if not _end(operation, OperationState.FAILED, error=message + (f"\n{cleanup}" if cleanup else "")):
                    return _let_go(operation, cleanup_done=cleanup or "the plan's clean-up ran")
                failed_at = next((name for name in plan.step_names if name not in operation.done_step_names), "")
                operation_failure_notify(operation=operation, step=failed_at)
        return operation.state
    finally:
        runner.close()


def _let_go(operation: Operation, cleanup_done: str | None = None) -> str | None:
    """This worker's attempt lost the operation. If it was ended from outside meanwhile (cancelled, failed by the
    watchdog), the clean-up it owes runs here, once (``cleanup_done``: this worker ran it already)."""
    state, attempts = Operation.objects.filter(pk=operation.pk).values_list("state", "attempts").get()
    if state in OPERATION_RETRYABLE_STATES and attempts == operation.attempts:
        logger.warning("operation %s was ended from outside while it ran; stopping at the step boundary", operation.pk)
        operation_run_cleanup(operation.pk, already_done=cleanup_done)
    else:
        logger.warning(
            "operation %s was taken from this worker (now %s, attempt %s); stopping without touching it",
            operation.pk, state, attempts,
        )
    return state


def _append_error(operation_id: int, note: str) -> None:
    Operation.objects.filter(pk=operation_id).update(
        error=Concat(F("error"), Value(f"\n{note}"), output_field=TextField())
    )


def operation_run_cleanup(operation_id: int, *, already_done: str | None = None) -> bool:
    """Run the plan's ``fail`` (the release of what the operation took) owed after it was ended from outside, if it
    is still owed and nobody has taken it; returns whether this call took it. ``already_done`` records a clean-up
    the caller ran itself instead of running it again.

    Taking it is a conditional update (``cleanup_state`` owed → running), so it runs once. Its note is appended to
    the operation's error; it ends ``done``, or ``failed`` with ``cleanup_error`` when it raised (a retry of the
    operation runs the plan, and so its release, again)."""
    taken = Operation.objects.filter(pk=operation_id, cleanup_state=CleanupState.OWED).update(
        cleanup_state=CleanupState.RUNNING, cleanup_claimed_at=timezone.now()
    )
    if not taken:
        return False
    operation = Operation.objects.get(pk=operation_id)
    outcome, cleanup_error = CleanupState.DONE, ""
    if already_done is not None:
        note = already_done
    else:
        try:
            # The error is still the reason it was ended for: notes are appended only once a clean-up finished.
            note = plan_for(operation.kind).fail(operation, operation.error)
        except Exception as error:
            logger.exception("clean-up of operation %s failed", operation_id)
            cleanup_error = f"{error.__class__.__name__}: {error}"
            note = f"clean-up failed ({cleanup_error}); retry the operation to run it again"
            outcome = CleanupState.FAILED
    if note:
        _append_error(operation_id, note)
    Operation.objects.filter(pk=operation_id, cleanup_state=CleanupState.RUNNING).update(
        cleanup_state=outcome, cleanup_error=cleanup_error
    )
    return True


def operation_end_from_outside(
    *,
    operation: Operation,
    reason: str,
    expected_state: str,
    expected_attempts: int | None = None,
    actor=None,
    state: str = OperationState.FAILED,
) -> Operation:
    """End an operation that is ``expected_state`` (queued or running; and ``expected_attempts``, when given) in
    ``state`` (``failed``, or ``cancelled``) with ``reason``, as a conditional change under a row lock; raises
    ``IllegalTransition`` naming the current state when it is no longer what the caller saw. The clean-up it now
    owes is recorded on it in the same change (``cleanup_state`` owed) and runs now when no live worker holds it
    (queued, or running with a stale heartbeat), else by the worker at its next step boundary."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.CELLHUB["OPERATION_LEASE_SECONDS"])
    with transaction.atomic():
        locked = Operation.objects.select_for_update().get(pk=operation.pk)
        if locked.state != expected_state or (expected_attempts is not None and locked.attempts != expected_attempts):
            raise IllegalTransition(locked, locked.state, state)
        worker_alive = locked.state == OperationState.RUNNING and locked.updated_at >= stale
        OPERATION.change(
            locked, state, only_from={expected_state}, finished_at=now, error=reason,
            cleanup_state=CleanupState.OWED, cleanup_claimed_at=None, cleanup_error="",
        )
    _audit(locked, "operation.end", FAILED, reason=reason, actor=actor, state=str(state),
           ended_from_outside=True, worker_alive=worker_alive)
    logger.warning("operation %s ended from outside: %s", locked.pk, reason)
    if not worker_alive:
        operation_run_cleanup(locked.pk)
    locked.refresh_from_db()
    return locked


def operation_cancel(
    *, operation: Operation, reason: str, cancelled_by, expected_state: str | None = None
) -> Operation:
    """Staff stop a queued or running operation: it ends ``cancelled`` with "cancelled by <who>: <reason>" and its
    plan releases what it took (a running worker stops at its next step boundary, without running further steps);
    until that release has run, ``cleanup_state`` says it is owed. A cancelled operation may be retried.

    ``expected_state`` is the state staff saw (default: the one in memory). Raises ``Refused`` (no reason given,
    or the operation has already ended) or ``IllegalTransition`` (it changed since staff looked).
    """

    reason = (reason or "").strip()
    if not reason:
        raise Refused("Say why the operation is cancelled.", field="reason")
    expected = str(expected_state or operation.state)
    if expected not in {OperationState.QUEUED, OperationState.RUNNING}:
        raise Refused(
            f"operation #{operation.pk} is {expected}: only a queued or running operation can be cancelled",
            current_state=expected,
        )
    who = cancelled_by.get_username() if cancelled_by is not None else "the hub"
    return operation_end_from_outside(
        operation=operation, reason=f"cancelled by {who}: {reason}", expected_state=expected, actor=cancelled_by,
        state=OperationState.CANCELLED,
    )


def operation_progress(operation: Operation | None) -> dict:
    """How far an operation is: steps done of its plan, the step under way, and whether it has ended."""
    if operation is None:
        return {"done": 0, "total": 0, "percent": 0, "current": "", "finished": True, "state": "", "error": ""}
    names = plan_for(operation.kind).step_names
    done = [name for name in names if name in operation.done_step_names]
    finished = operation.state in OPERATION_FINAL_STATES
    percent = 100 if operation.state == OperationState.SUCCEEDED else round(100 * len(done) / len(names))
    current = "" if finished else next((name for name in names if name not in done), "finishing")
    return {
        "done": len(done),
        "total": len(names),
        "percent": percent,
        "current": current,
        "finished": finished,
        "state": operation.state,
        "error": operation.error if operation.state in OPERATION_RETRYABLE_STATES else "",
    }
