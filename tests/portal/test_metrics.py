"""/metrics parses with prometheus_client's own parser, and its numbers are the database's; a scrape costs the same
number of queries for a small fleet and a larger one."""
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from cells.choices import InstanceState, OperationKind, OperationState, PoolKind, ShareStatus
from cells.models import Instance, Operation, Share
from cells.selectors import reefs_with_capacity
from provisioning.models import Backup, BackupKind, BackupState, HealthStatus, InstanceHealth, Orphan
from provisioning.operations import operation_cancel
from tests.factories import make_cell, make_instance, make_pool, make_reef, make_region, make_user

pytestmark = pytest.mark.django_db


def _scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def _samples(family, name=None) -> dict:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for sample in family.samples if name is None or sample.name == name
    }


def _grow(cells, owner, how_many):
    """Instances across the states and cells, with shares, operations and backups."""
    states = [InstanceState.RUNNING, InstanceState.RUNNING, InstanceState.STOPPED, InstanceState.FAILED,
              InstanceState.PENDING, InstanceState.DECOMMISSIONED]
    now = timezone.now()
    made = []
    for i in range(how_many):
        cell = cells[i % len(cells)]
        state = states[i % len(states)]
        instance = make_instance(owner=owner, reef=cell["reef"], database_pool=cell["database"],
                                 compute_pool=cell["compute"], state=state)
        if state in (InstanceState.RUNNING, InstanceState.STOPPED):
            share = cell["storage"].shares.filter(status=ShareStatus.AVAILABLE).first()
            Share.objects.filter(pk=share.pk).update(status=ShareStatus.ASSIGNED, instance=instance)
            Backup.objects.create(instance=instance, kind=BackupKind.DATABASE, state=BackupState.SUCCEEDED,
                                  pool=cell["database"], location="file:///b", finished_at=now,
                                  taken_at=now - timedelta(hours=1 + i))
        kind = [OperationKind.PROVISION, OperationKind.BACKUP, OperationKind.STOP][i % 3]
        operation_state = [OperationState.SUCCEEDED, OperationState.FAILED, OperationState.QUEUED][i % 3]
        operation = Operation.objects.create(kind=kind, instance=instance, state=operation_state)
        if operation_state != OperationState.QUEUED:
            Operation.objects.filter(pk=operation.pk).update(started_at=now - timedelta(seconds=10 * (i + 1)),
                                                             finished_at=now)
        made.append(instance)
    return made


@pytest.fixture
def fleet(db):
    west, east = make_region(slug="west"), make_region(slug="east")
    cells = [make_cell(reef=make_reef(west), capacity=8), make_cell(reef=make_reef(west), capacity=4),
             make_cell(reef=make_reef(east), capacity=6)]
    make_pool(cells[2]["reef"], PoolKind.DATABASE, capacity=5, dedicated=True)  # not free for shared signups
    owner = make_user()
    instances = _grow(cells, owner, 12)
    return {"cells": cells, "owner": owner, "instances": instances}


def test_the_scrape_parses_and_its_numbers_are_the_databases(client, fleet):
    families = _scrape(client)

    instances = _samples(families["cellhub_instances"])
    expected = {}
    for instance in Instance.objects.select_related("region"):
        key = (("region", instance.region.slug), ("state", instance.state))
        expected[key] = expected.get(key, 0) + 1
    assert {key: value for key, value in instances.items() if value} == expected
    assert len(instances) == 2 * len(InstanceState.values)  # every state of every region, zeros included

    free = _samples(families["cellhub_free_slots"])
    reefs = list(reefs_with_capacity().select_related("region"))
    assert len(free) == 5 * len(reefs)
    for reef in reefs:
        labels = {"region": reef.region.slug, "reef": reef.slug}
        for kind, value in (("database", reef.free_database_slots), ("storage", reef.free_storage_slots),
                            ("compute", reef.free_compute_slots), ("instance", reef.free_instance_slots),
                            ("placeable", reef.placeable_slots)):
            assert free[tuple(sorted({**labels, "kind": kind}.items()))] == value
    assert any(value for value in free.values()) and any(not value for value in free.values())

    operations = _samples(families["cellhub_operations"])
    for kind in OperationKind.values:
        for state in OperationState.values:
            count = Operation.objects.filter(kind=kind, state=state).count()
            assert operations[(("kind", kind), ("state", state))] == count
    failed = _samples(families["cellhub_operations_failed"])
    assert failed[(("kind", "backup"),)] == Operation.objects.filter(kind="backup", state="failed").count() > 0

    durations = families["cellhub_operation_duration_seconds"]
    assert durations.type == "histogram"
    counts, sums = _samples(durations, durations.name + "_count"), _samples(durations, durations.name + "_sum")
    buckets = _samples(durations, durations.name + "_bucket")
    for kind, outcome in (("provision", "succeeded"), ("backup", "failed")):
        finished = Operation.objects.filter(kind=kind, state=outcome)
        seconds = [(o.finished_at - o.started_at).total_seconds() for o in finished]
        key = (("kind", kind), ("outcome", outcome))
        assert counts[key] == len(seconds) and sums[key] == pytest.approx(sum(seconds))
        assert buckets[(*key[:1], ("le", "60.0"), key[1])] == len([s for s in seconds if s <= 60])
        assert buckets[(*key[:1], ("le", "+Inf"), key[1])] == len(seconds)

    from django_q.models import OrmQ

    assert families["cellhub_task_queue_depth"].samples[0].value == OrmQ.objects.count()
    ages = _samples(families["cellhub_backup_age_seconds"])
    latest = [b.taken_at for b in Backup.objects.all()]
    now = timezone.now()
    assert ages[(("aggregate", "newest"), ("kind", "database"))] == pytest.approx(
        (now - max(latest)).total_seconds(), abs=30)
    assert ages[(("aggregate", "oldest"), ("kind", "database"))] == pytest.approx(
        (now - min(latest)).total_seconds(), abs=30)
    without = _samples(families["cellhub_instances_without_backup"])
    assert without[(("kind", "files"),)] == Instance.objects.filter(state__in=["running", "stopped"]).count() > 0
    assert without[(("kind", "database"),)] == 0
    schedules = _samples(families["cellhub_schedule_overdue_seconds"])
    assert (("schedule", "operation watchdog"),) in schedules


def test_stuck_work_health_and_orphans_are_counted(client, fleet):
    running = [i for i in fleet["instances"] if i.state == InstanceState.RUNNING]
    stale = timezone.now() - timedelta(hours=1)
    lost = Operation.objects.create(kind=OperationKind.RESTORE, instance=running[0], state=OperationState.RUNNING)
    Operation.objects.filter(pk=lost.pk).update(updated_at=stale, started_at=stale)
    InstanceHealth.objects.create(instance=running[1], status=HealthStatus.UNHEALTHY, flagged_at=timezone.now())
    InstanceHealth.objects.create(instance=running[2], status=HealthStatus.HEALTHY)
    Orphan.objects.create(key="a", kind="database", direction="unclaimed", resource_name="x")
    Orphan.objects.create(key="b", kind="database", direction="unclaimed", resource_name="y", state="cleaned")

    families = _scrape(client)
    assert _samples(families["cellhub_operations_stuck"]) == {(("cause", "heartbeat_lost"), ("kind", "restore")): 1}
    assert _samples(families["cellhub_instances_health"]) == {
        (("status", "unhealthy"),): 1, (("status", "unknown"),): 0, (("status", "flagged"),): 1,
    }
    assert _samples(families["cellhub_orphans"]) == {(("direction", "unclaimed"), ("kind", "database")): 1}


def test_a_scrape_costs_the_same_queries_for_a_bigger_fleet(client, fleet):
    client.get("/metrics")  # warm caches (content types, the broker)
    with CaptureQueriesContext(connection) as small:
        client.get("/metrics")
    cells = [make_cell(reef=make_reef(make_region(slug=f"more-{i}")), capacity=10) for i in range(3)]
    _grow(cells, fleet["owner"], 30)
    with CaptureQueriesContext(connection) as big:
        families = _scrape(client)
    assert len(big) == len(small) <= 20
    assert sum(_samples(families["cellhub_instances"]).values()) == Instance.objects.count() == 42


def test_a_metrics_token_keeps_strangers_out(client, settings, fleet):
    settings.CELLHUB = {**settings.CELLHUB, "METRICS_TOKEN": "s3cret"}
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_metrics_count_cancelled_operations_apart_from_failed(staff_user, client):
    cell = make_cell(capacity=2)
    instance = make_instance(reef=cell["reef"], state=InstanceState.RUNNING)
    stop = Operation.objects.create(kind=OperationKind.STOP, instance=instance)
    Operation.objects.create(kind=OperationKind.STOP, instance=instance, state=OperationState.FAILED)
    operation_cancel(operation=stop, reason="x", cancelled_by=staff_user)
    scraped = _scrape(client)
    by_state = _samples(scraped["cellhub_operations"])
    assert by_state[(("kind", "stop"), ("state", "cancelled"))] == 1
    assert by_state[(("kind", "stop"), ("state", "failed"))] == 1
    assert _samples(scraped["cellhub_operations_failed"])[(("kind", "stop"),)] == 1  # the cancel is no failure
