"""RDS through the hub's services, as a signup drives them: on-demand backups as per-database dumps in S3, and a
point-in-time restore that recovers the pool into a temporary RDS instance, extracts the one database into a new
database of the pool, switches the instance to it and deletes the temporary instance (on failure too).

moto (``mock_aws``) plays RDS, S3 and KMS. moto's RDS instances answer with an endpoint address no one can reach;
here its address is the local PostgreSQL server (127.0.0.1), so the SQL, pg_dump and pg_restore really run.
Every SDK request is recorded from botocore's own ``before-parameter-build`` event, so the shapes are asserted.
"""
from __future__ import annotations

import hashlib
import time

import boto3
import moto.rds.models
import psycopg
import pytest
import yaml
from django.utils import timezone
from moto import mock_aws

from cells.choices import OperationState, PoolKind, Provider
from provisioning import drivers
from provisioning.backups import backups_expire, instance_restore, restorable_window
from provisioning.drivers.aws_rds import RdsDatabaseDriver
from provisioning.models import Backup, BackupKind, BackupState, InstanceDatabase, Restore, RestoreState
from tests.factories import make_pool, make_reef, make_region
from tests.provisioning import test_backups as shared
from tests.provisioning.aws_offline import offline_aws
from tests.provisioning.test_backups import back_up, finished, postgres_connect, signup

pytestmark = pytest.mark.django_db
REGION = "us-east-1"
BUCKET = "acme-db-backups"
backup_key = shared.backup_key
run = shared.run


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    offline_aws(monkeypatch, tmp_path, REGION, CELLHUB_POOL_SECRET_TEST_RDS="unused-with-trust-auth")


@pytest.fixture
def calls(monkeypatch):
    """moto for RDS/S3/KMS; every request the hub's boto3 clients build, as (service, operation, params)."""
    with mock_aws():
        monkeypatch.setattr(moto.rds.models.DBInstance, "address", property(lambda self: "127.0.0.1"))
        recorded = []
        boto3.setup_default_session()

        def record(params, model, **kwargs):
            recorded.append((model.service_model.service_name, model.name, dict(params)))

        boto3.DEFAULT_SESSION.events.register("before-parameter-build", record)
        yield recorded
        boto3.DEFAULT_SESSION = None


@pytest.fixture
def rds_cell(calls, settings):
    """An AWS reef whose database pool is a (moto) RDS instance at 127.0.0.1; files and compute local."""
    boto3.client("route53").create_hosted_zone(Name=settings.CELLHUB["HUB_DOMAIN"], CallerReference="hub")
    kms_key = boto3.client("kms", region_name=REGION).create_key(Description="pool key")["KeyMetadata"]["Arn"]
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    reef = make_reef(make_region(cloud="aws", location=REGION))
    pool = make_pool(reef, PoolKind.DATABASE, capacity=3, provider=Provider.AWS_RDS, config={
        "master_password_env": "CELLHUB_POOL_SECRET_TEST_RDS", "master_username": "postgres", "sslmode": "disable",
        "backup_bucket": BUCKET, "kms_key_id": kms_key, "waiter_delay_seconds": 1, "waiter_max_attempts": 3,
    })
    result = RdsDatabaseDriver(pool).provision_pool()
    pool.config = {**pool.config, **result["config"]}
    pool.external_id = result["external_id"]
    pool.save()
    return {"reef": reef, "database": pool, "kms_key": kms_key,
            "storage": make_pool(reef, PoolKind.STORAGE, capacity=3),
            "compute": make_pool(reef, PoolKind.COMPUTE, capacity=3)}


def _write(instance, *bodies, database=None):
    with postgres_connect(instance, database) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS aws_rows (body text)")
        for body in bodies:
            connection.execute("INSERT INTO aws_rows VALUES (%s)", [body])


def _rows(instance, database=None):
    with postgres_connect(instance, database) as connection:
        return [row[0] for row in connection.execute("SELECT body FROM aws_rows ORDER BY body")]


def _deployed_database_url(instance) -> str:
    compute = drivers.for_pool(instance.compute_pool)
    documents = list(yaml.safe_load_all(compute.manifest_path(instance).read_text()))
    return next(d for d in documents if d["kind"] == "Secret")["stringData"]["DATABASE_URL"]


def _rds_instances():
    return sorted(i["DBInstanceIdentifier"] for i in boto3.client("rds", region_name=REGION)
                  .describe_db_instances()["DBInstances"])


def _named(calls, operation):
    return [params for _, name, params in calls if name == operation]


def test_on_demand_backup_is_one_database_dumped_to_s3_with_the_pools_key_never_a_snapshot(run, rds_cell, calls):
    instance = signup(run, rds_cell)
    _write(instance, "row-1")
    back_up(run, instance)
    backup = Backup.objects.get(instance=instance, kind=BackupKind.DATABASE)
    driver = drivers.for_pool(instance.database_pool)
    s3 = boto3.client("s3", region_name=REGION)
    bucket, _, object_key = backup.location.removeprefix("s3://").partition("/")
    head = s3.head_object(Bucket=bucket, Key=object_key)
    body = s3.get_object(Bucket=bucket, Key=object_key)["Body"].read()

    assert bucket == BUCKET and object_key.startswith(driver.identifier + "/")
    assert f"/{driver.database_name(instance)}/" in object_key and object_key.endswith(".dump")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == rds_cell["kms_key"]
    assert backup.checksum == hashlib.sha256(body).hexdigest() == head["Metadata"]["sha256"]
    assert head["Metadata"]["database"] == driver.database_name(instance)
    assert body.startswith(b"PGDMP")  # pg_dump's custom format
    assert backup.state == BackupState.SUCCEEDED and backup.size_bytes == len(body)
    # no whole-instance snapshot: the manual-snapshot quota cannot be reached on this path
    assert _named(calls, "CreateDBSnapshot") == []
    assert boto3.client("rds", region_name=REGION).describe_db_snapshots(SnapshotType="manual")["DBSnapshots"] == []


def test_point_in_time_restore_recovers_a_temporary_instance_extracts_the_database_switches_and_deletes_it(
    run, rds_cell, calls
):
    instance = signup(run, rds_cell)
    driver = drivers.for_pool(instance.database_pool)
    original = driver.database_name(instance)
    _write(instance, "t1")
    time.sleep(1.1)
    _write(instance, "t2")
    time.sleep(1.1)
    window = restorable_window(instance=instance)
    assert window.continuous and window.start <= window.end
    point = window.end  # RDS's LatestRestorableTime (moto: now)
    calls.clear()

    operation = finished(run(instance_restore, instance=instance, point_in_time=point))

    assert operation.state == OperationState.SUCCEEDED, operation.error
    restore = Restore.objects.get(operation=operation)
    assert restore.state == RestoreState.SUCCEEDED and restore.old_database == original
    temporary = driver.temporary_identifier(restore.new_database)
    (recover,) = _named(calls, "RestoreDBInstanceToPointInTime")
    assert recover["SourceDBInstanceIdentifier"] == driver.identifier
    assert recover["TargetDBInstanceIdentifier"] == temporary
    assert recover["RestoreTime"] == point and recover["PubliclyAccessible"] is False
    assert {"Key": "cellhub-temporary", "Value": "restore"} in recover["Tags"]
    # waited for available, then deleted without a final snapshot and waited for gone
    waits = [params["DBInstanceIdentifier"] for params in _named(calls, "DescribeDBInstances")]
    assert waits.count(temporary) >= 2
    (delete,) = _named(calls, "DeleteDBInstance")
    assert delete == {"DBInstanceIdentifier": temporary, "SkipFinalSnapshot": True, "DeleteAutomatedBackups": True}
    assert _rds_instances() == [driver.identifier]
    # the new database holds the data, is the instance's, and the deployment was switched to it
    assert InstanceDatabase.objects.get(instance=instance).name == restore.new_database
    assert _rows(instance, restore.new_database) == ["t1", "t2"]
    url = _deployed_database_url(instance)
    assert url.endswith(f"/{restore.new_database}?sslmode=disable")
    with psycopg.connect(url.split("?")[0]) as connection:
        assert [r[0] for r in connection.execute("SELECT body FROM aws_rows ORDER BY body")] == ["t1", "t2"]
    # the old database is kept until confirmed
    assert driver.database_exists(instance=instance, database=original)


def test_a_restore_that_fails_after_the_temporary_instance_exists_leaves_nothing_behind(
    run, rds_cell, calls, monkeypatch
):
    """The temporary instance answers at an address nothing listens on: the dump cannot reach it (transient,
    retried until the step gives up), and the failed restore's clean-up deletes the temporary instance."""
    instance = signup(run, rds_cell)
    driver = drivers.for_pool(instance.database_pool)
    _write(instance, "t1")
    time.sleep(1.1)
    monkeypatch.setattr(moto.rds.models.DBInstance, "address", property(
        lambda self: "127.0.0.2" if self.db_instance_identifier.endswith("-tmp") else "127.0.0.1"))

    point = restorable_window(instance=instance).end
    operation = finished(run(instance_restore, instance=instance, point_in_time=point))

    assert operation.state == OperationState.FAILED
    assert "127.0.0.2" in operation.error
    restore = Restore.objects.get(operation=operation)
    assert _named(calls, "RestoreDBInstanceToPointInTime")  # it got that far
    assert _named(calls, "DeleteDBInstance")[-1]["DBInstanceIdentifier"] == driver.temporary_identifier(
        restore.new_database)
    assert _rds_instances() == [driver.identifier]  # and the temporary instance is gone
    assert not driver.database_exists(instance=instance, database=restore.new_database)
    assert not InstanceDatabase.objects.filter(instance=instance).exists()
    assert _deployed_database_url(instance).endswith(f"/{driver.database_name(instance)}?sslmode=disable")
    assert _rows(instance) == ["t1"]


def test_retention_deletes_expired_dumps_from_s3_and_nothing_else(run, rds_cell, settings):
    instance = signup(run, rds_cell)
    _write(instance, "t1")
    old = Backup.objects.get(operation=back_up(run, instance))
    time.sleep(1.1)
    kept = Backup.objects.get(operation=back_up(run, instance))
    Backup.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timezone.timedelta(days=1))
    Backup.objects.filter(pk=kept.pk).update(expires_at=timezone.now() + timezone.timedelta(days=1))

    backups_expire()

    s3 = boto3.client("s3", region_name=REGION)
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys == [kept.location.removeprefix(f"s3://{BUCKET}/")]
    assert Backup.objects.get(pk=old.pk).state == BackupState.DELETED
    assert Backup.objects.get(pk=kept.pk).state == BackupState.SUCCEEDED


def test_rds_declares_point_in_time_restore_switching_and_deletion():
    capabilities = drivers.capabilities(Provider.AWS_RDS)
    assert capabilities.point_in_time_restore and capabilities.database_restore
    assert capabilities.database_switching and capabilities.backup_deletion
