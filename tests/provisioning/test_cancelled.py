"""Cancelled is a state: a cancel by staff ends the operation ``cancelled`` (not ``failed``), and the clean-up it then
owes (its plan's release) is on its own record, run once — at once, by its worker, or by the watchdog."""
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from cells.choices import CleanupState, InstanceState, OperationKind, OperationState, PoolKind, PoolStatus
from cells.errors import IllegalTransition
from cells.models import AuditEvent, Operation
from provisioning.operations import operation_cancel, operation_progress, operation_retry
from provisioning.watchdog import operations_watch
from tests.factories import make_cell, make_instance, make_pool


@pytest.fixture
def instance(db):
    cell = make_cell(capacity=2)
    return make_instance(reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"],
                         state=InstanceState.RUNNING)


def test_cancelling_a_queued_operation_ends_it_cancelled_and_runs_its_clean_up_at_once(instance, staff_user):
    stop = Operation.objects.create(kind=OperationKind.STOP, instance=instance)
    operation_cancel(operation=stop, reason="wrong instance", cancelled_by=staff_user)

    stop = Operation.objects.get(pk=stop.pk)
    assert stop.state == OperationState.CANCELLED and stop.finished_at is not None
    assert stop.error == (
        f"cancelled by {staff_user.username}: wrong instance\n"
        "the instance keeps its state; retry when the cause is fixed"
    )
    assert (stop.cleanup_state, stop.cleanup_error) == (CleanupState.DONE, "")
    assert not Operation.objects.filter(state=OperationState.FAILED).exists()
    (end,) = AuditEvent.objects.filter(action="operation.end", target_id=str(stop.pk))
    assert end.details["state"] == "cancelled" and end.actor == staff_user
    progress = operation_progress(stop)
    assert progress["finished"] and progress["state"] == "cancelled" and progress["error"].startswith("cancelled by")
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING


def test_a_live_worker_owes_the_clean_up_and_the_watchdog_settles_it_if_it_never_comes_back(instance, staff_user):
    now = timezone.now()
    stop = Operation.objects.create(kind=OperationKind.STOP, instance=instance, state=OperationState.RUNNING,
                                       attempts=1, started_at=now)  # its heartbeat (updated_at) is fresh
    operation_cancel(operation=stop, reason="maintenance", cancelled_by=staff_user)
    stop.refresh_from_db()
    assert stop.state == OperationState.CANCELLED
    assert (stop.cleanup_state, stop.cleanup_claimed_at) == (CleanupState.OWED, None)
    assert "keeps its state" not in stop.error  # not run yet: its worker runs it at its next step boundary
    with pytest.raises(IllegalTransition, match="cancelled and still cleaning up"):
        operation_retry(operation=stop)

    assert operations_watch(now=now + timedelta(seconds=5))["cleaned_up"] == []  # the worker may still come back
    assert operations_watch(now=now + timedelta(hours=2))["cleaned_up"] == [stop.pk]
    stop.refresh_from_db()
    assert stop.state == OperationState.CANCELLED and stop.cleanup_state == CleanupState.DONE
    assert stop.error.endswith("the instance keeps its state; retry when the cause is fixed")
    assert operations_watch(now=now + timedelta(hours=3))["cleaned_up"] == []  # once

    operation_retry(operation=stop)
    stop.refresh_from_db()
    assert (stop.state, stop.cleanup_state) == (OperationState.QUEUED, CleanupState.NONE)


def test_a_clean_up_whose_runner_died_is_freed_and_run_again(instance):
    ended = timezone.now() - timedelta(hours=3)
    stop = Operation.objects.create(
        kind=OperationKind.STOP, instance=instance, state=OperationState.CANCELLED, finished_at=ended,
        error="cancelled by x: y", cleanup_state=CleanupState.RUNNING, cleanup_claimed_at=ended,
    )
    assert operations_watch()["cleaned_up"] == []  # this pass frees it ...
    stop.refresh_from_db()
    assert (stop.cleanup_state, stop.cleanup_claimed_at) == (CleanupState.OWED, None)
    assert operations_watch()["cleaned_up"] == [stop.pk]  # ... the next runs it
    stop.refresh_from_db()
    assert stop.cleanup_state == CleanupState.DONE


def test_a_clean_up_that_fails_is_recorded_on_the_operation_and_a_retry_is_allowed(db, staff_user):
    cell = make_cell(capacity=2)
    pool = make_pool(cell["reef"], PoolKind.STORAGE, status=PoolStatus.FAILED)
    # Its replacement pool's row is gone: the replace plan's release cannot find it.
    replace = Operation.objects.create(kind=OperationKind.REPLACE, pool=pool, params={"new_pool_id": 987654})
    operation_cancel(operation=replace, reason="replacing by hand", cancelled_by=staff_user)
    replace.refresh_from_db()
    assert replace.state == OperationState.CANCELLED
    assert replace.cleanup_state == CleanupState.FAILED and replace.cleanup_error == "KeyError: 987654"
    assert replace.error.endswith("clean-up failed (KeyError: 987654); retry the operation to run it again")
    operation_retry(operation=replace)
    replace.refresh_from_db()
    assert (replace.state, replace.cleanup_state, replace.cleanup_error) == (OperationState.QUEUED, "none", "")


def test_only_an_ended_operation_owes_a_clean_up(instance):
    with pytest.raises(IntegrityError, match="operation_cleanup_only_when_ended"), transaction.atomic():
        Operation.objects.create(kind=OperationKind.STOP, instance=instance, cleanup_state=CleanupState.OWED)
    with pytest.raises(IntegrityError, match="operation_state_valid"), transaction.atomic():
        Operation.objects.create(kind=OperationKind.STOP, instance=instance, state="canceled")

