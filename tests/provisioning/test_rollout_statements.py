"""Rollouts cost statements that do not grow with the fleet: planning is the same few statements at any size, and a
tick spends at most six statements per upgrade it starts (enqueueing them included)."""
import itertools
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from cells.choices import InstanceState, OperationKind, OperationState, ReleaseState, RolloutState, TargetState
from cells.models import AuditEvent, Instance, Operation, Release, Rollout, RolloutTarget, RolloutWave
from provisioning.rollouts import rollout_create, rollout_start, rollouts_tick
from tests.factories import make_cell, make_reef, make_region, make_user

pytestmark = pytest.mark.django_db
SUNDAY_0230 = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)  # the region's default window is open
_fleets = itertools.count(1)


def build_fleet(size: int, *, reefs: int = 2) -> Release:
    """``size`` running instances on 1.0 spread over ``reefs`` reefs alternating rings 0 and 1, and a release for
    them; the instances of earlier fleets are pinned, so they are no release's targets."""
    Instance.objects.update(version_pinned=True)
    fleet = next(_fleets)
    region = make_region()
    owner = make_user()
    per_reef = -(-size // reefs)
    rows = []
    for n in range(reefs):
        cell = make_cell(make_reef(region, rollout_ring=n % 2, max_instances=per_reef), capacity=1)
        cell["database"].__class__.objects.filter(pk__in=[cell["database"].pk, cell["compute"].pk]).update(
            capacity=per_reef
        )
        rows += [
            Instance(name=f"f{fleet}-{n}-{i}", owner=owner, region=region, reef=cell["reef"],
                     database_pool=cell["database"], compute_pool=cell["compute"], server_version="1.0",
                     state=InstanceState.RUNNING)
            for i in range(per_reef)
        ]
    Instance.objects.bulk_create(rows[:size], batch_size=2000)
    return Release.objects.create(version=f"2.{fleet}", image="img", state=ReleaseState.AVAILABLE)


def plan_statements(size: int) -> int:
    release = build_fleet(size)
    with CaptureQueriesContext(connection) as queries:
        rollout = rollout_create(release=release)
    assert RolloutTarget.objects.filter(rollout=rollout).count() == size
    waves = dict(RolloutWave.objects.filter(rollout=rollout).values_list("ring", "total"))
    assert sum(waves.values()) == size and set(waves) == {0, 1}
    Release.objects.filter(pk=release.pk).update(state=ReleaseState.WITHDRAWN)
    return len(queries.captured_queries)


def test_planning_costs_the_same_statements_at_any_fleet_size():
    # 2,500 targets: more than one batch of any bulk insert the planner could use.
    small, large = plan_statements(20), plan_statements(2500)
    assert small == large, f"planning took {small} statements for 20 instances and {large} for 2,500"


def tick_statements(batch: int, capture) -> int:
    release = build_fleet(30)
    rollout = rollout_create(release=release, batch_size=batch)
    rollout_start(rollout=rollout)
    with CaptureQueriesContext(connection) as queries:
        # The enqueue after commit counts too (the ORM broker's insert and the task ids written back).
        with capture(execute=True):
            assert rollouts_tick(now=SUNDAY_0230) == [rollout.pk]
    started = RolloutTarget.objects.filter(rollout=rollout, state=TargetState.UPGRADING)
    assert started.count() == batch
    operations = Operation.objects.filter(kind=OperationKind.UPGRADE, state=OperationState.QUEUED,
                                          params__version=release.version, instance__rollout_targets__rollout=rollout)
    assert set(operations.values_list("pk", flat=True)) == set(started.values_list("operation_id", flat=True))
    assert operations.exclude(task_id="").count() == batch  # handed to the broker
    assert AuditEvent.objects.filter(action="operation.create", target_id__in=[
        str(pk) for pk in operations.values_list("pk", flat=True)]).count() == batch
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.CANCELLED)
    return len(queries.captured_queries)


def test_a_tick_costs_at_most_six_statements_per_upgrade_started(django_capture_on_commit_callbacks):
    one, ten = tick_statements(1, django_capture_on_commit_callbacks), tick_statements(
        10, django_capture_on_commit_callbacks)
    assert ten <= 6 * 10, f"a tick starting 10 upgrades took {ten} statements"
    further = (ten - one) / 9
    assert further <= 6, f"each further upgrade cost {further:.1f} statements ({one} for 1, {ten} for 10)"


def test_a_tick_leaves_a_busy_instance_pending_with_the_reason(django_capture_on_commit_callbacks):
    release = build_fleet(4, reefs=1)
    rollout = rollout_create(release=release, batch_size=4)
    rollout_start(rollout=rollout)
    busy = Instance.objects.order_by("pk").first()
    blocking = Operation.objects.create(kind=OperationKind.STOP, instance=busy)
    with django_capture_on_commit_callbacks(execute=True):
        rollouts_tick(now=SUNDAY_0230)
    target = RolloutTarget.objects.get(rollout=rollout, instance=busy)
    assert target.state == TargetState.PENDING and target.operation_id is None
    assert f"stop #{blocking.pk} is queued" in target.note
    assert RolloutTarget.objects.filter(rollout=rollout, state=TargetState.UPGRADING).count() == 3
