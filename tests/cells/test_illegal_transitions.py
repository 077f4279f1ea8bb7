"""Illegal state changes, written out by hand for every state table — not derived from the table under test.

Each pair is refused by ``can`` and, applied to a real row in that state, by ``change`` (an ``IllegalTransition``
naming the current state, the row untouched).
"""
import pytest

from cells.errors import IllegalTransition
from cells.models import Operation, Pool, Release, Rollout
from cells.states import INSTANCE, OPERATION, POOL, REEF, REGION, RELEASE, ROLLOUT, SHARE
from tests.factories import make_cell, make_instance, make_reef, make_region

ILLEGAL = {
    "instance": (INSTANCE, [
        ("pending", "running"), ("pending", "stopped"), ("pending", "decommissioned"), ("pending", "upgrading"),
        ("provisioning", "stopped"), ("provisioning", "decommissioning"), ("provisioning", "pending"),
        ("running", "pending"), ("running", "provisioning"), ("running", "decommissioned"),
        ("stopped", "pending"), ("stopped", "decommissioned"), ("stopped", "failed"),
        ("upgrading", "decommissioning"), ("upgrading", "pending"),
        ("failed", "stopped"), ("failed", "decommissioned"), ("failed", "pending"),
        ("decommissioning", "running"), ("decommissioning", "stopped"),
        ("decommissioned", "running"), ("decommissioned", "provisioning"), ("decommissioned", "failed"),
        ("decommissioned", "decommissioning"),
    ]),
    "share": (SHARE, [
        ("available", "archiving"), ("available", "scrubbing"),
        ("assigned", "scrubbing"), ("assigned", "retired"),
        ("archiving", "available"), ("archiving", "assigned"),
        ("scrubbing", "assigned"), ("scrubbing", "archiving"),
        ("retired", "available"), ("retired", "assigned"), ("failed", "assigned"),
    ]),
    "reef": (REEF, [
        ("provisioning", "draining"), ("provisioning", "retired"), ("active", "retired"), ("active", "provisioning"),
        ("retired", "active"), ("retired", "draining"), ("draining", "provisioning"),
    ]),
    "region": (REGION, [("offline", "draining")]),
    "release": (RELEASE, [
        ("draft", "default"), ("withdrawn", "default"), ("withdrawn", "draft"), ("available", "draft"),
        ("default", "draft"),
    ]),
    "rollout": (ROLLOUT, [
        ("planned", "paused"), ("planned", "halted"), ("planned", "completed"),
        ("paused", "halted"), ("paused", "completed"),
        ("completed", "running"), ("completed", "cancelled"), ("cancelled", "running"), ("cancelled", "planned"),
        ("halted", "completed"), ("halted", "paused"),
    ]),
    "operation": (OPERATION, [
        ("queued", "succeeded"), ("succeeded", "queued"), ("succeeded", "running"), ("succeeded", "failed"),
        ("failed", "running"), ("failed", "succeeded"),
    ]),
    "pool": (POOL, [
        ("provisioning", "draining"), ("provisioning", "retired"), ("available", "retired"),
        ("available", "provisioning"), ("retired", "available"), ("failed", "available"),
    ]),
}
CASES = [(table, current, target) for table, (_, pairs) in ILLEGAL.items() for current, target in pairs]


@pytest.mark.parametrize("table, current, target", CASES)
def test_the_table_refuses(table, current, target):
    machine, _ = ILLEGAL[table]
    assert not machine.can(current, target)


def _row(table, state):
    """A real row of ``table`` in ``state`` (written directly: the test sets up, the machine decides)."""
    if table == "instance":
        return make_instance(state=state)
    if table == "share":
        cell = make_cell(capacity=1)
        share = cell["storage"].shares.get()
        instance = make_instance(reef=cell["reef"]) if state == "assigned" else None
        type(share).objects.filter(pk=share.pk).update(status=state, instance=instance)
        share.refresh_from_db()
        return share
    if table == "reef":
        return make_reef(status=state)
    if table == "region":
        return make_region(status=state)
    if table == "release":
        return Release.objects.create(version=f"9.{Release.objects.count()}", image="img", state=state)
    if table == "rollout":
        release = Release.objects.create(version=f"8.{Release.objects.count()}", image="img", state="available")
        return Rollout.objects.create(release=release, state=state)
    if table == "operation":
        return Operation.objects.create(kind="provision", instance=make_instance(), state=state)
    if table == "pool":
        return Pool.objects.create(reef=make_reef(), name="p", kind="compute", provider="local_compute", capacity=1,
                                   status=state)
    raise AssertionError(table)


@pytest.mark.django_db
@pytest.mark.parametrize("table, current, target", CASES)
def test_the_change_is_refused_naming_the_current_state(table, current, target):
    machine, _ = ILLEGAL[table]
    row = _row(table, current)
    with pytest.raises(IllegalTransition) as refused:
        machine.change(row, target)
    assert refused.value.current_state == current
    field = machine.field
    assert type(row).objects.filter(pk=row.pk).values_list(field, flat=True).get() == current
