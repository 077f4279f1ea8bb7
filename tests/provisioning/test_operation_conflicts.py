"""One operation at a time where it matters: a kind that excludes another is refused (``OperationInProgress``, naming
the operation in the way) while that one is queued or running on the same instance, whichever service asks; kinds
that may overlap still do; and two concurrent requests can't both pass (the instance's row lock)."""
import threading
import time

import pytest
from django.db import connection, transaction
from django.utils import timezone

from cells.choices import InstanceState, OperationKind, OperationState, ReleaseState
from cells.errors import OperationInProgress
from cells.models import Instance, Operation, Release
from provisioning.backups import instance_backup, instance_decommission, instance_restore
from provisioning.lifecycle import instance_start, instance_stop
from provisioning.models import BackupKind
from provisioning.operations import operation_retry
from provisioning.rollouts import instance_upgrade
from tests.conftest import wait_for
from tests.factories import make_cell, make_instance

K = OperationKind

# What the table in provisioning/operations.py promises, written out here (not read from the code): the operation in
# the way, then the kind someone asks for on the same instance.
CONFLICTS = [
    *[(K.PROVISION, asked) for asked in (K.BACKUP, K.RESTORE, K.UPGRADE, K.STOP, K.START, K.DECOMMISSION)],
    (K.BACKUP, K.RESTORE), (K.BACKUP, K.DECOMMISSION),
    *[(K.RESTORE, asked) for asked in (K.BACKUP, K.RESTORE, K.UPGRADE, K.STOP, K.START, K.DECOMMISSION)],
    *[(K.UPGRADE, asked) for asked in (K.RESTORE, K.UPGRADE, K.STOP, K.START, K.DECOMMISSION)],
    *[(K.STOP, asked) for asked in (K.RESTORE, K.UPGRADE, K.STOP, K.START, K.DECOMMISSION)],
    *[(K.START, asked) for asked in (K.RESTORE, K.UPGRADE, K.STOP, K.START, K.DECOMMISSION)],
    *[(K.DECOMMISSION, asked) for asked in (K.BACKUP, K.RESTORE, K.UPGRADE, K.STOP, K.START, K.DECOMMISSION)],
]
ALLOWED = [(K.BACKUP, K.UPGRADE), (K.BACKUP, K.STOP), (K.UPGRADE, K.BACKUP), (K.STOP, K.BACKUP), (K.START, K.BACKUP)]


@pytest.fixture
def instance(db):
    cell = make_cell(capacity=3)
    return make_instance(name="acme", reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"],
                         state=InstanceState.RUNNING)


@pytest.fixture
def release(db):
    return Release.objects.create(version="2026.9.1", image="ghcr.io/cellhub/server", state=ReleaseState.AVAILABLE)


def ask(kind: str, instance: Instance, release: Release) -> Operation:
    """Ask for ``kind`` on ``instance`` through the service a door calls."""
    if kind == K.BACKUP:
        return instance_backup(instance=instance, kind=BackupKind.DATABASE)
    if kind == K.RESTORE:
        return instance_restore(instance=instance, point_in_time=timezone.now())
    if kind == K.UPGRADE:
        return instance_upgrade(instance=instance, release=release)
    if kind == K.STOP:
        return instance_stop(instance=instance)
    if kind == K.START:
        return instance_start(instance=instance)
    if kind == K.DECOMMISSION:
        return instance_decommission(instance=instance, confirm_name=instance.name)
    raise AssertionError(kind)


@pytest.mark.parametrize("state", [OperationState.QUEUED, OperationState.RUNNING])
@pytest.mark.parametrize(("in_the_way", "asked"), CONFLICTS, ids=[f"{a}-blocks-{b}" for a, b in CONFLICTS])
def test_a_conflicting_kind_is_refused_naming_the_operation_in_the_way(instance, release, in_the_way, asked, state):
    blocking = Operation.objects.create(kind=in_the_way, instance=instance, state=state)
    with pytest.raises(OperationInProgress) as refused:
        ask(asked, instance, release)
    assert refused.value.operation == blocking and refused.value.code == "operation_in_progress"
    article = "an" if in_the_way == K.UPGRADE else "a"
    assert f"{article} {in_the_way} of acme is " in refused.value.message and f"{state} (operation #{blocking.pk})" in (
        refused.value.message
    )
    assert refused.value.extra == {"operation": blocking.pk, "operation_kind": in_the_way, "operation_state": state}
    # Nothing was started or changed.
    assert list(Operation.objects.filter(instance=instance)) == [blocking]
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING


@pytest.mark.parametrize(("in_the_way", "asked"), ALLOWED, ids=[f"{a}-allows-{b}" for a, b in ALLOWED])
def test_kinds_that_may_overlap_still_do(instance, release, in_the_way, asked):
    Operation.objects.create(kind=in_the_way, instance=instance, state=OperationState.RUNNING)
    operation = ask(asked, instance, release)
    assert (operation.kind, operation.state) == (asked, OperationState.QUEUED)


def test_an_ended_operation_or_one_on_another_instance_is_not_in_the_way(instance, release):
    other = make_instance(reef=instance.reef, state=InstanceState.RUNNING)
    Operation.objects.create(kind=K.RESTORE, instance=other, state=OperationState.RUNNING)
    for state in (OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED):
        Operation.objects.create(kind=K.RESTORE, instance=instance, state=state)
    assert instance_stop(instance=instance).kind == K.STOP


def test_a_retry_is_refused_while_a_conflicting_operation_runs(instance, release):
    failed = Operation.objects.create(kind=K.STOP, instance=instance, state=OperationState.FAILED)
    upgrade = instance_upgrade(instance=instance, release=release)
    with pytest.raises(OperationInProgress, match=f"an upgrade of acme is queued \\(operation #{upgrade.pk}\\)"):
        operation_retry(operation=failed)
    failed.refresh_from_db()
    assert failed.state == OperationState.FAILED


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_requests_cannot_both_pass(release):
    """The upgrade's transaction has made its operation but not committed; a stop asked meanwhile (on its own
    connection) waits for the instance's row lock, then sees the upgrade and is refused: exactly one wins."""
    cell = make_cell(capacity=2)
    instance = make_instance(name="racer", reef=cell["reef"], database_pool=cell["database"],
                             compute_pool=cell["compute"], state=InstanceState.RUNNING)
    created, commit = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def upgrade():
        try:
            with transaction.atomic():
                outcome["upgrade"] = instance_upgrade(instance=Instance.objects.get(pk=instance.pk), release=release)
                created.set()
                commit.wait(10)  # hold the transaction (and its lock) open while the stop is asked
        finally:
            connection.close()

    def stop():
        try:
            outcome["stop"] = instance_stop(instance=Instance.objects.get(pk=instance.pk))
        except OperationInProgress as refusal:
            outcome["stop"] = refusal
        finally:
            connection.close()

    first = threading.Thread(target=upgrade)
    first.start()
    assert created.wait(10)
    second = threading.Thread(target=stop)
    second.start()
    time.sleep(0.5)
    assert second.is_alive() and "stop" not in outcome  # waiting for the lock, not deciding on what it cannot see
    commit.set()
    first.join(10)
    second.join(10)
    wait_for(lambda: "stop" in outcome, message="the stop's answer")

    upgrade_operation, refusal = outcome["upgrade"], outcome["stop"]
    assert isinstance(refusal, OperationInProgress) and refusal.operation.pk == upgrade_operation.pk
    assert list(Operation.objects.filter(instance=instance).values_list("kind", flat=True)) == [K.UPGRADE]
