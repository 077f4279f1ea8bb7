"""Stuck and abandoned work ends honestly: a killed worker's operation is requeued once, then failed with its reason;
a hung driver call times out; an operation stuck queued or past its time limit is requeued, then failed; staff
cancel operations and force an instance's state, audited with who and why."""
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from cells.choices import CleanupState, InstanceState, OperationKind, OperationState, Provider, ShareStatus
from cells.errors import IllegalTransition, Refused
from cells.models import AuditEvent, Instance, Operation, Share
from provisioning import drivers, faults
from provisioning.lifecycle import instance_force_state, instance_signup
from provisioning.models import OperationWatch
from provisioning.operations import operation_cancel, operation_retry, operation_run
from provisioning.watchdog import operations_watch
from tests.conftest import wait_for
from tests.factories import make_cell, make_instance, make_user


def _signup(cell, name):
    return instance_signup(
        name=name, region=cell["reef"].region,
        new_owner={"email": f"{name}@example.com", "password": "a-long-enough-passphrase"},
    )


def _audit(action, operation=None, **filters):
    rows = AuditEvent.objects.filter(action=action, **filters)
    if operation is not None:
        rows = rows.filter(target_type="operation", target_id=str(operation.pk))
    return list(rows.order_by("id"))


def _step_threads(operation):
    return [t for t in threading.enumerate() if t.name.startswith("step ") and f"#{operation.pk}" in t.name]


@pytest.fixture
def no_schedules():
    """The cluster's scheduler would run the watchdog itself; these tests run it by hand, at known moments."""
    from django_q.models import Schedule

    Schedule.objects.all().delete()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_killed_worker_is_requeued_once_then_failed_with_its_reason(qcluster, settings, no_schedules):
    settings.CELLHUB = {**settings.CELLHUB, "OPERATION_LEASE_SECONDS": 2}
    cell = make_cell(capacity=2, database_provider=Provider.POSTGRES)
    hang = {"CELLHUB_FAILPOINTS": "provision.compute.after=hang"}
    first = qcluster(**hang)
    operation = _signup(cell, "doomed")
    instance = operation.instance
    compute, database = drivers.for_pool(cell["compute"]), drivers.for_pool(cell["database"])
    wait_for(lambda: compute.status(instance=instance).exists, message="the deployment written")
    qcluster.kill(first)  # the worker dies mid-step
    assert Operation.objects.get(pk=operation.pk).state == OperationState.RUNNING

    wait_for(lambda: operation.pk in operations_watch()["requeued"], timeout=15, message="the requeue")
    operation.refresh_from_db()
    assert (operation.state, operation.attempts) == (OperationState.QUEUED, 1)
    watch = OperationWatch.objects.get(operation=operation)
    assert watch.requeues == 1 and watch.last_reason.startswith("worker lost: no heartbeat since ")
    (requeue,) = _audit("operation.requeue", operation)
    assert requeue.actor is None and requeue.actor_kind == "scheduler" and "no heartbeat since" in requeue.reason

    second = qcluster(**hang)  # the requeued task is picked up, and this worker dies too
    wait_for(lambda: Operation.objects.get(pk=operation.pk).attempts == 2, timeout=30, message="the second claim")
    time.sleep(0.5)
    qcluster.kill(second)
    wait_for(lambda: operation.pk in operations_watch()["failed"], timeout=15, message="the failure")

    operation.refresh_from_db()
    assert operation.state == OperationState.FAILED and operation.finished_at is not None
    assert operation.error.startswith("worker lost: no heartbeat since ")
    assert "requeued once already" in operation.error
    assert "everything taken was released" in operation.error  # the plan's fail ran, exactly as on a step failure
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert not compute.status(instance=instance).exists and not database.database_exists(instance=instance)
    assert not Share.objects.filter(instance=instance).exists()
    (end,) = [row for row in _audit("operation.end", operation) if row.outcome == "failed"]
    assert end.actor_kind == "scheduler" and end.reason == operation.error.splitlines()[0]
    assert operation.cleanup_state == CleanupState.DONE  # the clean-up it owed ran
    assert operations_watch() == {"requeued": [], "failed": [], "cleaned_up": []}  # nothing stuck any more


@pytest.mark.django_db(transaction=True)
def test_a_hung_driver_call_times_out_and_the_retry_finishes_the_step(settings, sync_tasks, caplog):
    settings.CELLHUB = {**settings.CELLHUB, "STEP_TIMEOUTS": {"default": 0.5}}
    faults.arm("provision.dns.before", "sleep:3")  # the first call hangs for 3 s, far past the 0.5 s limit
    cell = make_cell(capacity=2)
    started = time.monotonic()
    operation = _signup(cell, "slowdns")
    elapsed = time.monotonic() - started
    operation.refresh_from_db()
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert elapsed < 2.5  # it did not wait for the hung call
    assert operation.done_step_names == ["place", "database", "share", "compute", "firewall", "dns"]
    assert f"step dns of provision #{operation.pk} timed out after 0.5s" in caplog.text
    assert drivers.for_dns(cell["reef"].region).lookup(name="slowdns") == "127.0.0.1"
    wait_for(lambda: not _step_threads(operation), timeout=10, message="the abandoned call to end")


@pytest.mark.django_db(transaction=True)
def test_a_driver_call_that_keeps_hanging_fails_the_operation_with_the_timeout(settings, sync_tasks):
    settings.CELLHUB = {**settings.CELLHUB, "STEP_TIMEOUTS": {"default": 0.3}, "STEP_ATTEMPTS": 2}
    faults.arm("provision.compute.before", "sleep:1", times=0)  # every call hangs
    cell = make_cell(capacity=2)
    operation = _signup(cell, "stuckcompute")
    operation.refresh_from_db()
    assert operation.state == OperationState.FAILED
    assert operation.error.startswith(
        f"PermanentDriverError: compute: gave up after 2 attempts: step compute of provision #{operation.pk} "
        "timed out after 0.3s"
    )
    instance = Instance.objects.get(pk=operation.instance_id)
    assert instance.state == InstanceState.FAILED
    wait_for(lambda: not _step_threads(operation), timeout=10, message="the abandoned calls to end")
    # An abandoned call that wakes up after its operation gave up on it never starts the step late.
    assert not drivers.for_pool(cell["compute"]).status(instance=instance).exists


# ---- the watchdog's rules, at chosen moments -------------------------------------------------------------------


@pytest.fixture
def instance(db):
    cell = make_cell(capacity=2)
    return make_instance(reef=cell["reef"], state=InstanceState.PENDING)


def test_an_operation_never_picked_up_is_handed_over_again_once_then_failed(
    instance, settings, django_capture_on_commit_callbacks
):
    settings.CELLHUB = {**settings.CELLHUB, "OPERATION_TIME_LIMITS": {"queued": 600, "default": 1800}}
    operation = Operation.objects.create(kind=OperationKind.STOP, instance=instance)
    now = timezone.now()
    assert operations_watch(now=now + timedelta(seconds=599))["requeued"] == []
    with django_capture_on_commit_callbacks() as enqueued:
        assert operations_watch(now=now + timedelta(seconds=601))["requeued"] == [operation.pk]
    assert len(enqueued) == 1  # handed to django-q2 again
    operation.refresh_from_db()
    assert operation.state == OperationState.QUEUED and operation.updated_at >= now + timedelta(seconds=601)

    later = operation.updated_at + timedelta(seconds=601)
    assert operations_watch(now=later)["failed"] == [operation.pk]
    operation.refresh_from_db()
    assert operation.state == OperationState.FAILED
    assert operation.error.startswith("never picked up: queued since ")
    assert "past its 10-minute limit" in operation.error
    assert "the instance keeps its state" in operation.error  # the stop plan's fail ran
    assert [row.action for row in AuditEvent.objects.filter(target_id=str(operation.pk)).order_by("id")] == [
        "operation.requeue", "operation.end",
    ]


def test_a_running_operation_past_its_time_limit_is_requeued_then_failed(instance, settings, staff_client):
    settings.CELLHUB = {**settings.CELLHUB, "OPERATION_TIME_LIMITS": {"queued": 600, "default": 1800, "stop": 60}}
    now = timezone.now()
    operation = Operation.objects.create(kind=OperationKind.STOP, instance=instance, state=OperationState.RUNNING,
                                         attempts=1, started_at=now)
    OperationWatch.objects.create(operation=operation, claimed_at=now, worker="host:1")
    assert operations_watch(now=now + timedelta(seconds=30))["requeued"] == []
    Operation.objects.filter(pk=operation.pk).update(updated_at=now + timedelta(seconds=61))  # heartbeat: alive
    assert operations_watch(now=now + timedelta(seconds=61))["requeued"] == [operation.pk]
    assert Operation.objects.get(pk=operation.pk).state == OperationState.QUEUED

    # Claimed again (attempt 2) and stuck again, its worker alive: failed with the reason.
    claimed = now + timedelta(seconds=70)
    Operation.objects.filter(pk=operation.pk).update(state=OperationState.RUNNING, attempts=2, updated_at=claimed)
    OperationWatch.objects.filter(operation=operation).update(claimed_at=claimed)
    beat = claimed + timedelta(seconds=61)
    Operation.objects.filter(pk=operation.pk).update(updated_at=beat)
    assert operations_watch(now=beat)["failed"] == [operation.pk]
    operation.refresh_from_db()
    assert operation.state == OperationState.FAILED
    assert operation.error.startswith("ran past its 1-minute limit: running since ") and "(worker host:1)" in (
        operation.error
    )
    # Its worker is alive, so the clean-up is its own to run at the next step boundary; it never came back:
    assert operation.cleanup_state == CleanupState.OWED and operation.cleanup_claimed_at is None
    page = staff_client.get(f"/admin/cells/operation/{operation.pk}/change/").content.decode()
    assert "claimed" in page and "by host:1" in page and "requeued by the watchdog 1 time(s)" in page
    assert "its clean-up (the plan&#x27;s release) is still to run" in page
    assert operations_watch(now=beat + timedelta(seconds=30))["cleaned_up"] == []
    assert operations_watch(now=beat + timedelta(hours=2))["cleaned_up"] == [operation.pk]
    operation.refresh_from_db()
    assert operation.error.endswith("the instance keeps its state; retry when the cause is fixed")
    assert operation.cleanup_state == CleanupState.DONE


def test_a_retry_gives_the_watchdog_its_requeue_back_but_not_while_a_cleanup_is_owed(instance):
    operation = Operation.objects.create(kind=OperationKind.STOP, instance=instance, state=OperationState.FAILED,
                                         cleanup_state=CleanupState.OWED)
    OperationWatch.objects.create(operation=operation, requeues=1)
    with pytest.raises(IllegalTransition, match="still cleaning up"):
        operation_retry(operation=operation)
    Operation.objects.filter(pk=operation.pk).update(cleanup_state=CleanupState.DONE)
    operation_retry(operation=operation)
    assert OperationWatch.objects.get(operation=operation).requeues == 0
    operation.refresh_from_db()
    assert (operation.state, operation.cleanup_state) == (OperationState.QUEUED, CleanupState.NONE)


def test_operation_run_leaves_an_operation_a_live_worker_holds_alone(instance, settings):
    """Running, with a heartbeat inside the lease, held by another worker: a second delivery of its task runs no
    step, takes no attempt and writes no audit row; once the heartbeat is older than the lease, it is taken over."""
    settings.CELLHUB = {**settings.CELLHUB, "OPERATION_LEASE_SECONDS": 60}
    now = timezone.now()
    operation = Operation.objects.create(kind=OperationKind.STOP, instance=instance, state=OperationState.RUNNING,
                                         attempts=1, started_at=now - timedelta(minutes=5))
    OperationWatch.objects.create(operation=operation, claimed_at=now - timedelta(minutes=5), worker="elsewhere:4242")
    beat = now - timedelta(seconds=50)  # the other worker's last heartbeat: inside the lease
    Operation.objects.filter(pk=operation.pk).update(updated_at=beat)

    assert operation_run(operation.pk) is None
    operation.refresh_from_db()
    assert (operation.state, operation.attempts, operation.steps, operation.updated_at) == (
        OperationState.RUNNING, 1, [], beat)
    assert OperationWatch.objects.get(operation=operation).worker == "elsewhere:4242"
    assert not AuditEvent.objects.filter(target_type="operation", target_id=str(operation.pk)).exists()

    # The same operation whose heartbeat is past the lease (its worker died) is this worker's to take.
    Operation.objects.filter(pk=operation.pk).update(updated_at=now - timedelta(seconds=61))
    operation_run(operation.pk)
    operation.refresh_from_db()
    assert operation.attempts == 2 and OperationWatch.objects.get(operation=operation).worker != "elsewhere:4242"
    assert _audit("operation.start", operation)


def _sessions_waiting_for_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("requeues", [0, 1], ids=["would-requeue", "would-fail"])
def test_the_watchdog_rechecks_under_the_row_lock_and_leaves_a_refreshed_operation_alone(settings, requeues):
    """The watchdog lists an operation whose heartbeat is stale; before it gets the row lock, the operation's worker
    (another connection) commits a fresh heartbeat. Under the lock the watchdog sees it alive and does nothing:
    neither the requeue (first time stuck) nor the failure (stuck again)."""
    settings.CELLHUB = {**settings.CELLHUB, "OPERATION_LEASE_SECONDS": 30}
    cell = make_cell(capacity=2)
    instance = make_instance(reef=cell["reef"], state=InstanceState.RUNNING)
    long_ago = timezone.now() - timedelta(minutes=5)
    operation = Operation.objects.create(kind=OperationKind.STOP, instance=instance, state=OperationState.RUNNING,
                                         attempts=1, started_at=long_ago)
    Operation.objects.filter(pk=operation.pk).update(updated_at=long_ago)
    OperationWatch.objects.create(operation=operation, claimed_at=long_ago, worker="elsewhere:4242", requeues=requeues)
    beating, commit = threading.Event(), threading.Event()
    summary = {}

    def worker():  # the operation's worker, alive after all: its heartbeat holds the row until it commits
        try:
            with transaction.atomic():
                Operation.objects.filter(pk=operation.pk).update(updated_at=timezone.now())
                beating.set()
                commit.wait(30)
        finally:
            connection.close()

    def watchdog():
        try:
            summary.update(operations_watch())
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, name="worker"), threading.Thread(target=watchdog, name="watchdog")]
    threads[0].start()
    assert beating.wait(10)
    threads[1].start()
    try:
        # The heartbeat is not committed, so the watchdog's list still shows the operation stuck; it is now waiting
        # for the row lock to act on it.
        wait_for(lambda: _sessions_waiting_for_a_lock() == 1, timeout=15, message="the watchdog at the row lock")
    finally:
        commit.set()
        for thread in threads:
            thread.join(30)
    assert summary == {"requeued": [], "failed": [], "cleaned_up": []}
    operation.refresh_from_db()
    assert (operation.state, operation.attempts, operation.error) == (OperationState.RUNNING, 1, "")
    assert operation.updated_at > timezone.now() - timedelta(seconds=30)
    assert OperationWatch.objects.get(operation=operation).requeues == requeues
    assert not AuditEvent.objects.filter(target_type="operation", target_id=str(operation.pk)).exists()


# ---- staff: cancel and force-state -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_operation_stops_its_worker_at_the_next_step(staff_client, staff_user, caplog):
    cell = make_cell(capacity=2)
    faults.arm("provision.share.before", "sleep:1.5")  # the worker is busy in the share step when staff cancel
    cell_region = cell["reef"].region
    result = {}
    operation = instance_signup(  # queued (no cluster runs): this test is the worker, on a thread of its own
        name="cancelme", region=cell_region, new_owner={"email": "c@example.com", "password": "a-long-passphrase"}
    )

    def work():
        try:
            result["state"] = operation_run(operation.pk)
        finally:
            connection.close()  # this thread's own

    worker = threading.Thread(target=work, name="worker")
    worker.start()
    wait_for(lambda: Operation.objects.get(pk=operation.pk).state == OperationState.RUNNING, message="running")

    page = staff_client.post("/admin/cells/operation/", {"action": "cancel", "_selected_action": [operation.pk]})
    assert page.status_code == 200 and b"cancelled by" in page.content  # the intermediate page asks why
    assert Operation.objects.get(pk=operation.pk).state == OperationState.RUNNING
    response = staff_client.post("/admin/cells/operation/", {
        "action": "cancel", "_selected_action": [operation.pk], "apply": "1", "reason": "customer asked to stop",
    })
    assert response.status_code == 302
    operation.refresh_from_db()
    assert operation.state == OperationState.CANCELLED
    assert operation.error.startswith(f"cancelled by {staff_user.username}: customer asked to stop")
    worker.join(timeout=20)
    assert not worker.is_alive() and result["state"] == OperationState.CANCELLED

    operation.refresh_from_db()
    instance = Instance.objects.get(pk=operation.instance_id)
    # The worker finished the share step it was in, ran no further step, and released what the provision took.
    assert "step share started" in caplog.text and "step compute started" not in caplog.text
    assert not drivers.for_pool(cell["compute"]).status(instance=instance).exists
    assert instance.state == InstanceState.FAILED and not Share.objects.filter(instance=instance).exists()
    assert operation.error.endswith("everything taken was released")
    (cancel,) = _audit("operation.cancel", operation)
    assert (cancel.actor, cancel.actor_kind, cancel.outcome) == (staff_user, "staff", "succeeded")
    assert cancel.reason == "customer asked to stop" and cancel.details["seen_state"] == "running"
    ended = [row for row in _audit("operation.end", operation) if row.outcome == "failed"]
    assert len(ended) == 1 and ended[0].actor == staff_user and ended[0].details["worker_alive"] is True
    assert Share.objects.filter(pk__in=cell["storage"].shares.values("pk"), status=ShareStatus.AVAILABLE).count() == 2


def test_cancel_through_the_api_and_its_refusals_are_audited(instance, staff_user):
    from tests.portal.api.conftest import token_client

    operation = Operation.objects.create(kind=OperationKind.STOP, instance=instance)
    staff, customer = token_client(staff_user), token_client(instance.owner)
    assert customer.post(f"/api/v1/operations/{operation.pk}/cancel/", {"reason": "x"}).status_code == 403
    assert staff.post(f"/api/v1/operations/{operation.pk}/cancel/", {}, format="json").status_code == 400
    response = staff.post(f"/api/v1/operations/{operation.pk}/cancel/", {"reason": "wrong instance"}, format="json")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert response.json()["error"].startswith(f"cancelled by {staff_user.username}: wrong instance")
    again = staff.post(f"/api/v1/operations/{operation.pk}/cancel/", {"reason": "again"}, format="json")
    assert again.status_code == 409 and again.json()["error"]["current_state"] == "cancelled"

    rows = _audit("operation.cancel", operation)
    assert [(row.actor_kind, row.outcome) for row in rows] == [
        ("api_token", "refused"), ("api_token", "refused"), ("api_token", "succeeded"), ("api_token", "refused"),
    ]
    assert rows[0].actor == instance.owner and "may use this" in rows[0].reason
    assert "reason" in rows[1].reason  # the missing field, as the caller read it
    assert rows[2].actor == staff_user and rows[2].reason == "wrong instance"
    assert "only a queued or running operation can be cancelled" in rows[3].reason


def test_cancel_needs_a_reason_and_an_active_operation(instance, staff_user):

    operation = Operation.objects.create(kind=OperationKind.STOP, instance=instance, state=OperationState.SUCCEEDED)
    with pytest.raises(Refused, match="Say why"):
        operation_cancel(operation=operation, reason="  ", cancelled_by=staff_user)
    with pytest.raises(Refused, match="is succeeded"):
        operation_cancel(operation=operation, reason="why", cancelled_by=staff_user)


def test_force_state_from_the_admin_is_audited_with_who_and_why(staff_client, staff_user, instance):
    url = "/admin/cells/instance/"
    page = staff_client.post(url, {"action": "force_state", "_selected_action": [instance.pk]})
    assert page.status_code == 200 and b"bypasses the rules" in page.content
    assert b'name="seen_state" value="pending"' in page.content

    response = staff_client.post(url, {
        "action": "force_state", "_selected_action": [instance.pk], "apply": "1", "state": "running",
        "seen_state": "pending", "reason": "it runs: provisioned by hand during the outage",
    })
    assert response.status_code == 302
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING  # pending → running: no transition allows it, staff may
    (row,) = AuditEvent.objects.filter(action="instance.force_state")
    assert (row.actor, row.actor_kind, row.outcome, row.target_id) == (staff_user, "staff", "succeeded",
                                                                        str(instance.pk))
    assert row.reason == "it runs: provisioned by hand during the outage"
    assert (row.details["from_state"], row.details["to_state"]) == ("pending", "running")

    # The page was shown when it was pending; someone changed it since: refused, naming the state it is in.
    stale = staff_client.post(url, {
        "action": "force_state", "_selected_action": [instance.pk], "apply": "1", "state": "failed",
        "seen_state": "pending", "reason": "stale page",
    })
    assert stale.status_code == 200 and b"is running; it cannot become failed" in stale.content
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    refused = AuditEvent.objects.filter(action="instance.force_state", outcome="refused").get()
    assert refused.actor == staff_user and "is running" in refused.reason


def test_force_state_is_refused_while_an_operation_is_under_way(instance, staff_user):
    active = Operation.objects.create(kind=OperationKind.PROVISION, instance=instance, state=OperationState.RUNNING)
    with pytest.raises(Refused, match=f"operation #{active.pk} \\(provision\\) is running"):
        instance_force_state(instance=instance, state="failed", expected_state="pending", reason="x",
                             forced_by=staff_user)
    with pytest.raises(Refused, match="Say why"):
        instance_force_state(instance=instance, state="failed", expected_state="pending", reason="", forced_by=None)


def test_force_state_through_the_api(instance, staff_user):
    from tests.portal.api.conftest import token_client

    client = token_client(staff_user)
    body = {"state": "stopped", "expected_state": "pending", "reason": "record repair"}
    response = client.post(f"/api/v1/instances/{instance.name}/force-state/", body, format="json")
    assert response.status_code == 200 and response.json()["state"] == "stopped"
    wrong = client.post(f"/api/v1/instances/{instance.name}/force-state/", body, format="json")
    assert wrong.status_code == 409 and wrong.json()["error"]["current_state"] == "stopped"
    readonly = make_user(is_staff=True)
    from django.contrib.auth.models import Group

    from portal.roles import READ_ONLY_STAFF_GROUP

    readonly.groups.add(Group.objects.get(name=READ_ONLY_STAFF_GROUP))
    assert token_client(readonly).post(
        f"/api/v1/instances/{instance.name}/force-state/", body, format="json"
    ).status_code == 403
    rows = AuditEvent.objects.filter(action="instance.force_state").order_by("id")
    assert [(row.actor, row.outcome) for row in rows] == [
        (staff_user, "succeeded"), (staff_user, "refused"), (readonly, "refused"),
    ]
    assert rows[0].reason == "record repair" and rows[0].target_label == instance.name
