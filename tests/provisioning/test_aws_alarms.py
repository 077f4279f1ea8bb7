"""CloudWatch alarms for the RDS pools the hub provisions (CPU, free storage, connections): made by a database
top-up through the capacity services, their states on the pool's admin page, removed with the pool — moto plays
RDS and CloudWatch."""
from __future__ import annotations

import boto3
import pytest
from django.urls import reverse
from moto import mock_aws

from cells.choices import OperationState, PoolKind, PoolStatus, Provider
from cells.models import Pool
from provisioning import drivers
from provisioning.capacity import reef_top_up
from provisioning.health import pool_alarm_states
from tests.factories import make_pool, make_reef, make_region
from tests.provisioning.aws_offline import offline_aws

pytestmark = pytest.mark.django_db
REGION = "us-east-1"


@pytest.fixture(autouse=True)
def aws(monkeypatch, tmp_path):
    offline_aws(monkeypatch, tmp_path, REGION, CELLHUB_POOL_SECRET_TEST_RDS="Master-Passw0rd")
    with mock_aws():
        yield


@pytest.fixture
def rds_pool(sync_tasks, django_capture_on_commit_callbacks):
    """A new RDS pool made by a database top-up of an AWS reef (the template pool's host is not copied)."""
    reef = make_reef(make_region(cloud="aws", location=REGION), max_instances=1000)
    make_pool(reef, PoolKind.STORAGE, capacity=200)
    make_pool(reef, PoolKind.COMPUTE, capacity=200)
    make_pool(reef, PoolKind.DATABASE, capacity=1, provider=Provider.AWS_RDS, status=PoolStatus.DRAINING, config={
        "master_password_env": "CELLHUB_POOL_SECRET_TEST_RDS", "db_instance_identifier": "template-instance",
        "allocated_storage_gib": 200, "alarm_topic_arn": f"arn:aws:sns:{REGION}:123456789012:cellhub-oncall",
    })
    with django_capture_on_commit_callbacks(execute=True):
        operations = reef_top_up(reef=reef)
    (operation,) = [op for op in operations if op.pool.kind == PoolKind.DATABASE]
    operation.refresh_from_db()
    assert operation.state == OperationState.SUCCEEDED, operation.error
    return Pool.objects.get(pk=operation.pool_id)


def _alarms():
    return {alarm["AlarmName"]: alarm for alarm in
            boto3.client("cloudwatch", region_name=REGION).describe_alarms()["MetricAlarms"]}


def test_a_database_top_up_makes_the_pools_alarms(rds_pool):
    driver = drivers.for_pool(rds_pool)
    identifier = driver.identifier
    assert rds_pool.provider == Provider.AWS_RDS and identifier != "template-instance"
    alarms = _alarms()
    assert set(alarms) == {f"{identifier}-cpu", f"{identifier}-free-storage", f"{identifier}-connections"}
    dimensions = [{"Name": "DBInstanceIdentifier", "Value": identifier}]
    cpu, storage, connections = (alarms[f"{identifier}-{s}"] for s in ("cpu", "free-storage", "connections"))
    assert (cpu["Namespace"], cpu["MetricName"], cpu["Dimensions"]) == ("AWS/RDS", "CPUUtilization", dimensions)
    assert (cpu["Threshold"], cpu["ComparisonOperator"], cpu["EvaluationPeriods"], cpu["Period"]) == (
        80.0, "GreaterThanThreshold", 3, 300)
    assert (storage["MetricName"], storage["ComparisonOperator"]) == ("FreeStorageSpace", "LessThanThreshold")
    assert storage["Threshold"] == 0.1 * 200 * (1 << 30)  # 10 % of the allocated storage
    assert (connections["MetricName"], connections["Threshold"]) == ("DatabaseConnections", 400.0)
    assert cpu["AlarmActions"] == [f"arn:aws:sns:{REGION}:123456789012:cellhub-oncall"] and cpu["ActionsEnabled"]


def test_the_alarms_states_are_on_the_pools_admin_page(rds_pool, staff_client):
    identifier = drivers.for_pool(rds_pool).identifier
    boto3.client("cloudwatch", region_name=REGION).set_alarm_state(
        AlarmName=f"{identifier}-cpu", StateValue="ALARM", StateReason="Threshold Crossed: 3 datapoints > 80")
    assert pool_alarm_states(pool=rds_pool) == {
        f"{identifier}-cpu": "ALARM", f"{identifier}-free-storage": "OK",
        f"{identifier}-connections": "OK"}

    page = staff_client.get(reverse("admin:cells_pool_change", args=[rds_pool.pk])).content.decode()

    assert f"{identifier}-cpu <b>ALARM</b>" in page
    assert f"{identifier}-connections <b>OK</b>" in page


def test_deleting_the_pool_removes_its_alarms(rds_pool):
    drivers.for_pool(rds_pool).delete_pool()
    assert _alarms() == {}
    drivers.for_pool(rds_pool).delete_pool()  # absent: nothing to do


def test_a_provider_without_alarms_says_so():
    pool = make_pool(kind=PoolKind.DATABASE)
    assert pool_alarm_states(pool=pool) == {}
