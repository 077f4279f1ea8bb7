"""The fleet tallies the database keeps (cells.tally) agree with the rows through every kind of change, fold without
losing a delta, and are what /metrics reads instead of counting the fleet."""
import importlib
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from cells.choices import InstanceState, OperationKind, OperationState
from cells.models import Instance, Operation, Tally
from cells.tally import DURATION_BUCKETS, tally_drift, tally_read
from portal.probes import HubCollector
from tests.factories import make_instance, make_region, make_user

pytestmark = pytest.mark.django_db


def _churn():
    """Instances and operations made, changed, moved, retried and deleted, one by one and in bulk."""
    owner = make_user()
    north, south = make_region(), make_region()
    made = [make_instance(owner=owner, region=north) for _ in range(4)]
    Instance.objects.bulk_create([Instance(name=f"bulk-{n}", owner=owner, region=south, server_version="1")
                                  for n in range(5)])
    Instance.objects.filter(pk=made[0].pk).update(state=InstanceState.RUNNING)
    Instance.objects.filter(region=south).update(state=InstanceState.STOPPED)
    Instance.objects.filter(pk=made[1].pk).update(region=south)
    Instance.objects.filter(pk=made[2].pk).delete()
    now = timezone.now()
    quick = Operation.objects.create(kind=OperationKind.PROVISION, instance=made[0], started_at=now)
    slow = Operation.objects.create(kind=OperationKind.BACKUP, instance=made[0], started_at=now - timedelta(hours=2))
    Operation.objects.filter(pk=quick.pk).update(state=OperationState.SUCCEEDED, finished_at=now + timedelta(
        seconds=3))
    Operation.objects.filter(pk=slow.pk).update(state=OperationState.FAILED, finished_at=now)
    Operation.objects.filter(pk=slow.pk).update(state=OperationState.QUEUED, finished_at=None)  # a retry
    Operation.objects.filter(pk=slow.pk).update(state=OperationState.SUCCEEDED, finished_at=now + timedelta(days=1))
    Operation.objects.create(kind=OperationKind.STOP, instance=made[3])
    Operation.objects.filter(kind=OperationKind.STOP).delete()
    return north, south, quick, slow


def test_the_tallies_agree_with_the_rows_through_every_kind_of_change():
    _churn()
    assert tally_drift() == []


def test_the_tallies_are_the_row_counts():
    north, south, quick, slow = _churn()
    tallies = tally_read()
    assert tallies[("instances", str(north.pk), InstanceState.PENDING, -1)][0] == 1
    assert tallies[("instances", str(north.pk), InstanceState.RUNNING, -1)][0] == 1
    assert tallies[("instances", str(south.pk), InstanceState.STOPPED, -1)][0] == 5
    assert tallies[("instances", str(south.pk), InstanceState.PENDING, -1)][0] == 1
    assert tallies[("operations", OperationKind.BACKUP, OperationState.SUCCEEDED, -1)][0] == 1
    assert not any(key[1] == OperationKind.STOP for key in tallies)
    assert tallies[("durations", OperationKind.PROVISION, OperationState.SUCCEEDED, 1)] == (1, pytest.approx(3, 0.01))
    # 26 hours: past the last bucket (6 hours); the failed first run no longer counts.
    assert tallies[("durations", OperationKind.BACKUP, OperationState.SUCCEEDED, -1)] == (1, pytest.approx(93600, 0.01))
    assert not any(key[0] == "durations" and key[2] == OperationState.FAILED for key in tallies)


def test_a_read_folds_the_deltas_into_one_row_per_key():
    _churn()
    before = tally_read()
    assert Tally.objects.count() == len(before)
    assert tally_read() == before


def test_the_migration_keeps_the_same_buckets_as_the_code():
    migration = importlib.import_module("cells.migrations.0013_tally")
    assert migration.BUCKETS == DURATION_BUCKETS


def _counts_over_fleet(sql: str) -> bool:
    depth = 0
    for position, character in enumerate(sql):
        depth += {"(": 1, ")": -1}.get(character, 0)
        if depth == 0 and sql.startswith(" FROM ", position):
            aggregate = re.search(r"\b(COUNT|SUM|MIN|MAX)\(", sql[:position])
            return bool(aggregate) and sql.startswith(('FROM "cells_instance"', 'FROM "cells_operation"'), position + 1)
    return False


def test_metrics_read_instance_and_operation_counts_from_the_tallies_not_the_rows():
    north, *_ = _churn()
    with CaptureQueriesContext(connection) as queries:
        families = {family.name: family for family in HubCollector().collect()}
    # No count over the instance or operation table (an aggregate whose outermost FROM is one of them).
    assert [query["sql"] for query in queries.captured_queries if _counts_over_fleet(query["sql"])] == []
    running = {tuple(sample.labels.values()): sample.value for sample in families["cellhub_instances"].samples}
    assert running[(InstanceState.RUNNING, north.slug)] == 1
    # A delta the database appended is what the next scrape shows.
    Tally.objects.create(family="instances", a=str(north.pk), b=InstanceState.RUNNING, n=41)
    families = {family.name: family for family in HubCollector().collect()}
    running = {tuple(sample.labels.values()): sample.value for sample in families["cellhub_instances"].samples}
    assert running[(InstanceState.RUNNING, north.slug)] == 42
