"""Backups, restores and decommission on an AWS reef (RDS + Storage Gateway + EKS + Route 53), through the hub's
services as the customer, staff and the scheduler drive them, at each SDK's wire (``tests/provisioning/aws_reef.py``).
For each plan: the request shapes, and a failure at each step leaves nothing behind and a retry succeeds."""
from __future__ import annotations

import json
import time

import boto3
import psycopg
import pytest

from cells.choices import InstanceState, OperationState, ShareStatus
from cells.models import Instance, Operation, Share
from provisioning import drivers, faults
from provisioning.backups import (
    backups_run_due,
    instance_backup,
    instance_decommission,
    instance_restore,
    instance_restore_files,
    restorable_window,
)
from provisioning.models import Backup, BackupKind, BackupReason, BackupState, InstanceDatabase, Restore, RestoreState
from tests.provisioning import aws_reef as reef_fixtures
from tests.provisioning.aws_reef import (
    ARCHIVE,
    DB_BACKUPS,
    GATEWAY,
    REGION,
    bucket_objects,
    rds_instances,
    route53_records,
    running,
)

pytestmark = pytest.mark.django_db
# The AWS reef's fixtures (tests/provisioning/aws_reef.py), used by name.
aws_reef, aws_wire, eks, run = reef_fixtures.aws_reef, reef_fixtures.aws_wire, reef_fixtures.eks, reef_fixtures.run
FILES = {"config/server.json": b'{"theme": "dark"}', "logs/a.log": b"x" * 70_000, "data/blob.bin": b"\x00\x01" * 999}


def _s3():
    return boto3.client("s3", region_name=REGION)


def _bucket(instance) -> str:
    return f"acme-{Share.objects.get(instance=instance).name}"


def _write_files(bucket: str, files: dict[str, bytes]) -> None:
    """What the instance wrote through its NFS mount, as the gateway uploads it: objects in the share's bucket."""
    for key, body in files.items():
        _s3().put_object(Bucket=bucket, Key=key, Body=body)


def _connect(instance, database=None):
    credentials = drivers.for_pool(instance.database_pool).credentials(instance, database=database)
    return psycopg.connect(host=credentials.host, port=credentials.port, user=credentials.login,
                           password=credentials.password, dbname=credentials.database, autocommit=True)


def _write_rows(instance, *bodies, database=None):
    with _connect(instance, database) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS notes (body text)")
        for body in bodies:
            connection.execute("INSERT INTO notes VALUES (%s)", [body])


def _rows(instance, database=None):
    with _connect(instance, database) as connection:
        return [row[0] for row in connection.execute("SELECT body FROM notes ORDER BY body")]


def _database_url(eks, instance) -> str:
    namespace = drivers.for_pool(instance.compute_pool).namespace(instance)
    return eks.objects[("secrets", namespace, f"{instance.name}-database")]["stringData"]["DATABASE_URL"]


def _finished(operation) -> Operation:
    operation.refresh_from_db()
    return operation


# ---- backups: on demand and on the schedule ----------------------------------------------------------------


def test_backups_on_demand_and_on_schedule_are_a_dump_in_s3_and_a_version_manifest(aws_reef, aws_wire, eks, run,
                                                                                 settings):
    instance = running(run, aws_reef)
    _write_rows(instance, "n1")
    bucket = _bucket(instance)
    _write_files(bucket, FILES)
    aws_reef["gateway"].cache(dirty=4.2)  # the gateway is still uploading what was written: the step waits
    aws_reef["gateway"].cache()
    aws_wire.calls.clear()

    operation = _finished(run(instance_backup, instance=instance, kinds=[BackupKind.DATABASE, BackupKind.FILES]))

    assert operation.state == OperationState.SUCCEEDED, operation.error
    aws_wire.stub.assert_no_pending_responses()
    database, files = (Backup.objects.get(operation=operation, kind=kind) for kind in (BackupKind.DATABASE,
                                                                                      BackupKind.FILES))
    rds = drivers.for_pool(instance.database_pool)
    assert database.location.startswith(f"s3://{DB_BACKUPS}/{rds.identifier}/")
    assert f"/{rds.database_name(instance)}/" in database.location and database.location.endswith(".dump")
    (dump_put,) = [p for p in aws_wire.named("PutObject") + aws_wire.named("CreateMultipartUpload")
                   if p["Bucket"] == DB_BACKUPS]
    assert dump_put["ServerSideEncryption"] == "aws:kms" and dump_put["SSEKMSKeyId"] == aws_reef["kms_key"]
    assert aws_wire.named("CreateDBSnapshot") == []  # never a snapshot of the shared instance
    share = Share.objects.get(instance=instance)
    assert files.location == f"s3://{ARCHIVE}/versions/{share.name}/{files.location.rsplit('/', 1)[-1]}"
    assert files.details["files"] == len(FILES) and files.size_bytes == sum(map(len, FILES.values()))
    (manifest_put,) = [p for p in aws_wire.named("PutObject") if p["Bucket"] == ARCHIVE]
    assert manifest_put["ServerSideEncryption"] == "aws:kms" and manifest_put["SSEKMSKeyId"] == aws_reef["kms_key"]
    assert aws_wire.named("DescribeCache") == [{"GatewayARN": GATEWAY}] * 2

    # The scheduler's pass: both kinds due for a running instance, one operation for both.
    aws_reef["gateway"].cache()
    with_schedule = run(backups_run_due)
    assert len(with_schedule) == 1
    scheduled = Operation.objects.get(pk=with_schedule[0])
    assert scheduled.state == OperationState.SUCCEEDED, scheduled.error
    assert sorted(Backup.objects.filter(operation=scheduled, reason=BackupReason.SCHEDULED,
                                        state=BackupState.SUCCEEDED).values_list("kind", flat=True)) == [
        BackupKind.DATABASE, BackupKind.FILES]
    assert run(backups_run_due) == []  # not due again
    aws_wire.stub.assert_no_pending_responses()


@pytest.mark.parametrize("cause", ["failpoint", "wire"])
@pytest.mark.parametrize("step", ["database", "files"])
def test_a_backup_failing_at_either_step_leaves_earlier_backups_and_a_retry_makes_the_missing_one(
    step, cause, aws_reef, aws_wire, eks, run, settings
):
    """Ours: a failpoint before the step. The cloud's: the dump bucket is gone (S3 refuses the upload), or the
    gateway is offline at every try of the files step (``GatewayNotConnected``: transient, retried, then given
    up)."""
    from provisioning.operations import operation_retry

    instance = running(run, aws_reef)
    _write_rows(instance, "n1")
    if cause == "failpoint":
        faults.arm(f"backup.{step}.before", "permanent")  # the files step fails before it asks the gateway anything
        named = f"backup.{step}.before"
    elif step == "database":
        _s3().delete_bucket(Bucket=DB_BACKUPS)
        named = "NoSuchBucket"
    else:
        for _ in range(settings.CELLHUB["STEP_ATTEMPTS"]):
            aws_wire.stub.add_client_error(
                "describe_cache", service_error_code="InvalidGatewayRequestException", http_status_code=400,
                service_message="The specified gateway is not connected.",
                modeled_fields={"error": {"errorCode": "GatewayNotConnected"}}, expected_params={"GatewayARN": GATEWAY})
        named = "GatewayNotConnected"
    operation = _finished(run(instance_backup, instance=instance, kinds=[BackupKind.DATABASE, BackupKind.FILES]))
    assert operation.state == OperationState.FAILED and named in operation.error, operation.error
    aws_wire.stub.assert_no_pending_responses()
    kept = list(Backup.objects.filter(operation=operation, state=BackupState.SUCCEEDED).values_list("kind", flat=True))
    assert kept == ([BackupKind.DATABASE] if step == "files" else [])
    if cause == "wire" and step == "database":
        _s3().create_bucket(Bucket=DB_BACKUPS)
    dumps = _s3().list_objects_v2(Bucket=DB_BACKUPS).get("KeyCount", 0)
    assert dumps == len(kept)
    manifests = _s3().list_objects_v2(Bucket=ARCHIVE).get("KeyCount", 0)
    assert manifests == 0

    aws_reef["gateway"].cache()
    retried = _finished(run(operation_retry, operation=operation))

    assert retried.state == OperationState.SUCCEEDED, retried.error
    aws_wire.stub.assert_no_pending_responses()
    assert Backup.objects.filter(operation=operation, state=BackupState.SUCCEEDED).count() == 2
    assert _s3().list_objects_v2(Bucket=DB_BACKUPS)["KeyCount"] == 1  # the same dump, never a second one
    assert _s3().list_objects_v2(Bucket=ARCHIVE)["KeyCount"] == 1


# ---- database: point-in-time restore ------------------------------------------------------------------------


def _restore_point(instance):
    _write_rows(instance, "t1")
    time.sleep(1.1)
    window = restorable_window(instance=instance)
    assert window.continuous  # RDS declares point-in-time restore: any second of its window
    return window.end


def test_a_point_in_time_restore_recovers_rds_at_t_extracts_the_database_and_switches_the_deployment(
    aws_reef, aws_wire, eks, run
):
    instance = running(run, aws_reef)
    point = _restore_point(instance)
    rds = drivers.for_pool(instance.database_pool)
    original = rds.database_name(instance)
    aws_wire.calls.clear()

    operation = _finished(run(instance_restore, instance=instance, point_in_time=point))

    assert operation.state == OperationState.SUCCEEDED, operation.error
    restore = Restore.objects.get(operation=operation)
    temporary = rds.temporary_identifier(restore.new_database)
    (recover,) = aws_wire.named("RestoreDBInstanceToPointInTime")
    assert (recover["SourceDBInstanceIdentifier"], recover["TargetDBInstanceIdentifier"],
            recover["RestoreTime"]) == (rds.identifier, temporary, point)
    assert aws_wire.named("DeleteDBInstance") == [
        {"DBInstanceIdentifier": temporary, "SkipFinalSnapshot": True, "DeleteAutomatedBackups": True}]
    assert rds_instances() == [rds.identifier]
    assert InstanceDatabase.objects.get(instance=instance).name == restore.new_database
    assert _rows(instance, restore.new_database) == ["t1"]
    # switched in one step: the EKS secret names the new database, the deployment keeps its replica
    assert _database_url(eks, instance).endswith(f"/{restore.new_database}?sslmode=disable")
    namespace = drivers.for_pool(instance.compute_pool).namespace(instance)
    assert eks.deployment(namespace)["spec"]["replicas"] == 1
    assert rds.database_exists(instance=instance, database=original)  # kept until confirmed
    aws_wire.stub.assert_no_pending_responses()


@pytest.mark.parametrize("step", ["verify", "safeguard", "restore", "activate"])
def test_a_database_restore_failing_at_any_step_leaves_no_database_no_temporary_instance_and_a_retry_succeeds(
    step, aws_reef, aws_wire, eks, run
):
    """A failpoint after each step's work; at the switch, EKS refuses the re-deployment (after the secret was
    patched), so the switch is undone: the secret back at the old database, the new one dropped."""
    from provisioning.operations import operation_retry

    instance = running(run, aws_reef)
    point = _restore_point(instance)
    rds = drivers.for_pool(instance.database_pool)
    original_url = _database_url(eks, instance)
    if step == "activate":
        eks.fail("PATCH", "deployments", 422)
        named = "422"
    else:
        faults.arm(f"restore.{step}.after", "permanent")
        named = f"restore.{step}.after"

    operation = _finished(run(instance_restore, instance=instance, point_in_time=point))

    assert operation.state == OperationState.FAILED and named in operation.error, operation.error
    restore = Restore.objects.get(operation=operation)
    assert restore.state == RestoreState.FAILED
    assert rds_instances() == [rds.identifier]  # no temporary instance left running
    assert not rds.database_exists(instance=instance, database=restore.new_database)
    assert not InstanceDatabase.objects.filter(instance=instance).exists()
    assert _database_url(eks, instance) == original_url  # the deployment still uses the old database
    assert _rows(instance) == ["t1"]

    retried = _finished(run(operation_retry, operation=operation))

    assert retried.state == OperationState.SUCCEEDED, retried.error
    assert InstanceDatabase.objects.get(instance=instance).name == restore.new_database
    assert _database_url(eks, instance).endswith(f"/{restore.new_database}?sslmode=disable")
    assert rds_instances() == [rds.identifier]
    aws_wire.stub.assert_no_pending_responses()


# ---- files: restore the share from a chosen backup ----------------------------------------------------------


def _files_backup(run, aws_reef, instance) -> Backup:
    aws_reef["gateway"].cache()
    operation = _finished(run(instance_backup, instance=instance, kind=BackupKind.FILES))
    assert operation.state == OperationState.SUCCEEDED, operation.error
    return Backup.objects.get(operation=operation, kind=BackupKind.FILES)


def _expect_files_restore(aws_reef, share, *, safeguard=True):
    if safeguard:
        aws_reef["gateway"].cache()  # the safeguard backup of what the share holds now
    aws_reef["gateway"].listed()  # restore: the file share whose cache is refreshed
    aws_reef["gateway"].refresh(share)


def _change_files(bucket):
    _write_files(bucket, {"config/server.json": b'{"theme": "light"}', "new.txt": b"written later"})
    _s3().delete_object(Bucket=bucket, Key="logs/a.log")


def test_a_files_restore_brings_the_chosen_backups_versions_back(aws_reef, aws_wire, eks, run):
    instance = running(run, aws_reef)
    bucket = _bucket(instance)
    _write_files(bucket, FILES)
    chosen = _files_backup(run, aws_reef, instance)
    _change_files(bucket)
    later = _files_backup(run, aws_reef, instance)
    assert later.checksum != chosen.checksum
    share = Share.objects.get(instance=instance)
    _expect_files_restore(aws_reef, share)
    aws_wire.calls.clear()

    operation = _finished(run(instance_restore_files, instance=instance, backup=chosen))

    assert operation.state == OperationState.SUCCEEDED, operation.error
    aws_wire.stub.assert_no_pending_responses()
    assert bucket_objects(bucket) == FILES
    manifest_key = chosen.location.removeprefix(f"s3://{ARCHIVE}/")
    reads = [(p["Bucket"], p["Key"]) for p in aws_wire.named("GetObject")]
    assert reads.count((ARCHIVE, manifest_key)) == 2  # its checksum verified, then it was read to restore
    copies = {p["Key"]: p["CopySource"] for p in aws_wire.named("CopyObject")}
    assert set(copies) == {"config/server.json", "logs/a.log"}  # what changed came back from its version
    recorded = json.loads(_s3().get_object(Bucket=ARCHIVE, Key=manifest_key)["Body"].read())["objects"]
    assert copies == {key: f"{bucket}/{key}?versionId={recorded[key]['VersionId']}" for key in copies}
    (removed,) = [p for p in aws_wire.named("DeleteObjects") if p["Bucket"] == bucket]
    assert removed["Delete"]["Objects"] == [{"Key": "new.txt"}]
    assert aws_wire.named("RefreshCache") == [{"FileShareARN": aws_reef["gateway"].arn(share), "FolderList": ["/"],
                                              "Recursive": True}]
    restore = Restore.objects.get(operation=operation)
    assert restore.safeguard.state == BackupState.SUCCEEDED  # what it held before, kept


@pytest.mark.parametrize("step", ["verify", "safeguard", "restore", "activate"])
def test_a_files_restore_failing_at_any_step_is_retried_to_the_backups_content(step, aws_reef, aws_wire, eks, run):
    from provisioning.operations import operation_retry

    instance = running(run, aws_reef)
    bucket = _bucket(instance)
    _write_files(bucket, FILES)
    chosen = _files_backup(run, aws_reef, instance)
    _change_files(bucket)
    share = Share.objects.get(instance=instance)
    faults.arm(f"restore.{step}.after", "permanent")
    if step in ("safeguard", "restore", "activate"):
        aws_reef["gateway"].cache()
    if step in ("restore", "activate"):
        _expect_files_restore(aws_reef, share, safeguard=False)

    operation = _finished(run(instance_restore_files, instance=instance, backup=chosen))

    assert operation.state == OperationState.FAILED and f"restore.{step}.after" in operation.error
    aws_wire.stub.assert_no_pending_responses()
    restore = Restore.objects.get(operation=operation)
    assert restore.state == RestoreState.FAILED
    assert Share.objects.get(pk=share.pk).status == ShareStatus.ASSIGNED  # the share stays the instance's

    # A retry starts over; the safeguard the first run made is kept, not made again.
    _expect_files_restore(aws_reef, share, safeguard=step == "verify")
    retried = _finished(run(operation_retry, operation=operation))

    assert retried.state == OperationState.SUCCEEDED, retried.error
    aws_wire.stub.assert_no_pending_responses()
    assert bucket_objects(bucket) == FILES


def test_a_files_backup_changed_after_it_was_taken_is_refused_before_anything_is_written(aws_reef, aws_wire, eks,
                                                                                         run):
    instance = running(run, aws_reef)
    bucket = _bucket(instance)
    _write_files(bucket, FILES)
    chosen = _files_backup(run, aws_reef, instance)
    _change_files(bucket)
    changed = bucket_objects(bucket)
    key = chosen.location.removeprefix(f"s3://{ARCHIVE}/")
    _s3().put_object(Bucket=ARCHIVE, Key=key, Body=b'{"objects": {}}')  # rewritten behind the hub's back

    operation = _finished(run(instance_restore_files, instance=instance, backup=chosen))

    assert operation.state == OperationState.FAILED and "does not match its recorded checksum" in operation.error
    assert bucket_objects(bucket) == changed
    aws_wire.stub.assert_no_pending_responses()  # not even the gateway was asked


# ---- decommission: archive to deep storage → scrub → share back to the pool ------------------------------------

DECOMMISSION_STEPS = ("stop_compute", "archive_share", "final_backup", "drop_database", "scrub_share",
                      "return_share", "remove_dns", "mark_decommissioned")


def _expect_decommission(aws_reef, share, *, first: int = 0, archived: bool = False):
    """Queue the gateway calls of the decommission steps from ``first`` on."""
    for name in DECOMMISSION_STEPS[first:]:
        if name == "archive_share" and not archived:
            aws_reef["gateway"].cache(dirty=1.5)  # still uploading: the step waits (transient) and asks again
            aws_reef["gateway"].cache()
        if name == "scrub_share":
            aws_reef["gateway"].released(share)


def _assert_decommissioned(instance, aws_reef, eks, settings, bucket):
    instance.refresh_from_db()
    assert instance.state == InstanceState.DECOMMISSIONED
    rds = drivers.for_pool(aws_reef["database"])
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
        assert connection.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                                  [rds.database_name(instance) + "%"]).fetchone()[0] == 0
        assert connection.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s",
                                  [rds.login_name(instance)]).fetchone()[0] == 0
    assert eks.namespaces() == []
    assert route53_records(settings) == {}
    share = Share.objects.get(name=bucket.removeprefix("acme-"))
    assert (share.status, share.instance_id, share.firewall_address) == (ShareStatus.AVAILABLE, None, "")
    assert aws_reef["gateway"].clients[share.pk] == "127.0.0.1/32"
    assert _s3().list_object_versions(Bucket=bucket).get("Versions", []) == []
    assert _s3().list_object_versions(Bucket=bucket).get("DeleteMarkers", []) == []
    archive = Backup.objects.get(instance=instance, reason=BackupReason.ARCHIVE)
    head = _s3().head_object(Bucket=ARCHIVE, Key=archive.location.removeprefix(f"s3://{ARCHIVE}/"))
    assert head["StorageClass"] == "DEEP_ARCHIVE" and head["ServerSideEncryption"] == "aws:kms"
    assert head["Metadata"]["sha256"] == archive.checksum
    assert Backup.objects.get(instance=instance, reason=BackupReason.FINAL).state == BackupState.SUCCEEDED
    assert rds_instances() == [rds.identifier]


def test_a_decommission_archives_to_deep_storage_scrubs_returns_the_share_and_removes_everything(
    aws_reef, aws_wire, eks, run, settings
):
    instance = running(run, aws_reef)
    _write_rows(instance, "n1")
    bucket = _bucket(instance)
    _write_files(bucket, FILES)
    share = Share.objects.get(instance=instance)
    _expect_decommission(aws_reef, share)
    namespace = drivers.for_pool(instance.compute_pool).namespace(instance)
    aws_wire.calls.clear()

    operation = _finished(run(instance_decommission, instance=instance, confirm_name=instance.name))

    assert operation.state == OperationState.SUCCEEDED, operation.error
    aws_wire.stub.assert_no_pending_responses()
    _assert_decommissioned(instance, aws_reef, eks, settings, bucket)
    (archive_put,) = [p for p in aws_wire.named("PutObject") if p["Bucket"] == ARCHIVE]
    assert archive_put["StorageClass"] == "DEEP_ARCHIVE" and archive_put["SSEKMSKeyId"] == aws_reef["kms_key"]
    assert archive_put["ChecksumSHA256"]  # S3 checks the bytes it got
    assert [r["path"] for r in eks.requests if r["method"] == "DELETE"] == [f"/api/v1/namespaces/{namespace}"]
    assert aws_wire.named("DeleteObjects", "s3")  # every version and delete marker scrubbed


@pytest.mark.parametrize("step", DECOMMISSION_STEPS)
def test_a_decommission_failing_at_any_step_keeps_everything_consistent_and_a_retry_resumes_there(
    step, aws_reef, aws_wire, eks, run, settings
):
    instance = running(run, aws_reef)
    _write_rows(instance, "n1")
    bucket = _bucket(instance)
    _write_files(bucket, FILES)
    share = Share.objects.get(instance=instance)
    failing = DECOMMISSION_STEPS.index(step)
    # The failpoint fires after the step's work: the gateway calls of the later steps are not made.
    _expect_decommission_until(aws_reef, share, failing)
    faults.arm(f"decommission.{step}.after", "permanent")

    operation = _finished(run(instance_decommission, instance=instance, confirm_name=instance.name))

    assert operation.state == OperationState.FAILED and f"stopped at {step}" in operation.error
    aws_wire.stub.assert_no_pending_responses()
    instance.refresh_from_db()
    # Only the last step's own change is made when it fails after it; the instance is never left in between.
    assert instance.state == (InstanceState.DECOMMISSIONED if step == "mark_decommissioned"
                              else InstanceState.DECOMMISSIONING)
    share.refresh_from_db()
    assert share.status != ShareStatus.AVAILABLE or failing >= DECOMMISSION_STEPS.index("return_share")
    assert rds_instances() == [drivers.for_pool(aws_reef["database"]).identifier]

    # The same request retries it; it resumes at the failed step (which re-runs: each is safe to repeat).
    archived = failing >= DECOMMISSION_STEPS.index("archive_share")
    _expect_decommission(aws_reef, share, first=failing, archived=archived)
    retried = _finished(run(instance_decommission, instance=instance, confirm_name=instance.name))

    assert retried.pk == operation.pk and retried.state == OperationState.SUCCEEDED, retried.error
    aws_wire.stub.assert_no_pending_responses()
    _assert_decommissioned(instance, aws_reef, eks, settings, bucket)
    assert Backup.objects.filter(instance=instance, reason=BackupReason.ARCHIVE).count() == 1


def _expect_decommission_until(aws_reef, share, last: int):
    for name in DECOMMISSION_STEPS[: last + 1]:
        if name == "archive_share":
            aws_reef["gateway"].cache(dirty=1.5)
            aws_reef["gateway"].cache()
        if name == "scrub_share":
            aws_reef["gateway"].released(share)


def test_a_decommission_whose_archive_bucket_is_gone_stops_there_and_finishes_once_it_is_back(
    aws_reef, aws_wire, eks, run, settings
):
    instance = running(run, aws_reef)
    bucket = _bucket(instance)
    _write_files(bucket, FILES)
    share = Share.objects.get(instance=instance)
    _s3().delete_bucket(Bucket=ARCHIVE)
    aws_reef["gateway"].cache()

    operation = _finished(run(instance_decommission, instance=instance, confirm_name=instance.name))

    assert operation.state == OperationState.FAILED and "stopped at archive_share" in operation.error
    assert "NoSuchBucket" in operation.error
    assert bucket_objects(bucket) == FILES  # nothing scrubbed without an archive
    assert Share.objects.get(pk=share.pk).status == ShareStatus.ARCHIVING

    _s3().create_bucket(Bucket=ARCHIVE)
    _expect_decommission(aws_reef, share, first=DECOMMISSION_STEPS.index("archive_share"))
    retried = _finished(run(instance_decommission, instance=instance, confirm_name=instance.name))

    assert retried.state == OperationState.SUCCEEDED, retried.error
    aws_wire.stub.assert_no_pending_responses()
    _assert_decommissioned(instance, aws_reef, eks, settings, bucket)
    assert Instance.objects.get(pk=instance.pk).state == InstanceState.DECOMMISSIONED
