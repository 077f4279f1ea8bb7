"""The API tells work in the way (409 naming the operation: id, kind, state) and a cancelled operation (its own
state, filterable, with the clean-up it owed) apart from a failed one."""
from cells.choices import CleanupState, OperationKind, OperationState
from cells.models import Operation
from provisioning.operations import operation_cancel, operation_retry


def test_a_stop_during_a_restore_is_a_409_naming_the_restore(world):
    restore = Operation.objects.create(kind=OperationKind.RESTORE, instance=world["mine"], state=OperationState.RUNNING)
    response = world["clients"]["owner"].post("/api/v1/instances/mine/stop/")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "operation_in_progress"
    assert (error["operation"], error["operation_kind"], error["operation_state"]) == (restore.pk, "restore", "running")
    assert error["message"] == (
        f"a restore of mine is running (operation #{restore.pk}); a stop must wait until it has finished"
    )
    assert not Operation.objects.filter(instance=world["mine"], kind=OperationKind.STOP).exists()


def test_a_cancelled_operation_reads_cancelled_and_filters_apart_from_failed(world):
    staff, owner = world["clients"]["staff"], world["clients"]["owner"]
    stop = Operation.objects.create(kind=OperationKind.STOP, instance=world["mine"])
    failed = Operation.objects.create(kind=OperationKind.BACKUP, instance=world["mine"], state=OperationState.FAILED,
                                      error="DriverError: disk full")
    response = staff.post(f"/api/v1/operations/{stop.pk}/cancel/", {"reason": "customer changed their mind"},
                          format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "cancelled" and body["cleanup_state"] == CleanupState.DONE  # queued: released at once

    listed = staff.get("/api/v1/operations/", {"state": "cancelled"}).json()["results"]
    assert [row["id"] for row in listed] == [stop.pk]
    assert [row["id"] for row in staff.get("/api/v1/operations/", {"state": "failed"}).json()["results"]] == [
        failed.pk
    ]
    # The customer learns it was cancelled, not that it failed; staff read who cancelled it and why.
    assert owner.get(f"/api/v1/operations/{stop.pk}/").json()["error"] == "The operation was cancelled by support."
    assert owner.get(f"/api/v1/operations/{failed.pk}/").json()["error"] == (
        "The operation failed; support has been told."
    )
    assert staff.get(f"/api/v1/operations/{stop.pk}/").json()["error"].startswith(
        f"cancelled by {world['users']['staff'].username}: customer changed their mind"
    )


def test_a_cancelled_operation_can_be_retried(world):
    staff = world["clients"]["staff"]
    stop = Operation.objects.create(kind=OperationKind.STOP, instance=world["mine"])
    operation_cancel(operation=stop, reason="by mistake", cancelled_by=world["users"]["staff"])
    response = staff.post(f"/api/v1/operations/{stop.pk}/retry/")
    assert response.status_code == 202 and response.json()["state"] == "queued"
    stop.refresh_from_db()
    assert (stop.state, stop.cleanup_state, stop.error) == (OperationState.QUEUED, CleanupState.NONE, "")
    # Queued again, it can be cancelled again; a retry of one that is queued is refused, naming its state.
    again = staff.post(f"/api/v1/operations/{stop.pk}/retry/")
    assert again.status_code == 409 and again.json()["error"]["current_state"] == "queued"
    operation_cancel(operation=stop, reason="still by mistake", cancelled_by=None)
    operation_retry(operation=stop)
