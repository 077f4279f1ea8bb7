"""The AWS drivers (RDS, Storage Gateway + S3 + KMS, Route 53) against moto and botocore's Stubber.

moto (``mock_aws``) plays RDS, S3, KMS, STS and Route 53. moto has no Storage Gateway, so that client is
wrapped in botocore's ``Stubber`` with the exact request each call must make (``expected_params``):
a call the test did not expect, or with other parameters, fails the test. The SQL half of RDS (a
database and its login inside the instance) runs against the real local PostgreSQL at 127.0.0.1.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import zipfile

import boto3
import psycopg
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from cells.choices import PoolKind
from provisioning.drivers.aws_rds import (
    RdsDatabaseDriver,
    drop_instance_database,
    ensure_instance_database,
    rds_identifier,
)
from provisioning.drivers.aws_storage_gateway import NO_CLIENT, StorageGatewayDriver, bucket_policy, role_arn_of
from provisioning.drivers.base import PermanentDriverError, TransientDriverError, resource_name
from provisioning.drivers.route53 import Route53DnsDriver
from tests.factories import make_instance, make_pool, make_reef, make_region

REGION = "us-east-1"
GATEWAY = f"arn:aws:storagegateway:{REGION}:123456789012:gateway/sgw-12A3456B"
NEW_GATEWAY = f"arn:aws:storagegateway:{REGION}:123456789012:gateway/sgw-99Z9999Z"
ROLE = "arn:aws:iam::123456789012:role/cellhub-gateway"
# DescribeCache's answer in the SDK's own example: the cache disks are named by DiskIds.
DESCRIBE_CACHE = {"CacheAllocatedInBytes": 2199023255552, "CacheDirtyPercentage": 0.07, "CacheHitPercentage": 99.68,
                  "CacheMissPercentage": 0.32, "CacheUsedPercentage": 0.07,
                  "DiskIds": ["pci-0000:03:00.0-scsi-0:0:0:0", "pci-0000:04:00.0-scsi-0:1:0:0"]}
HUB = "arn:aws:iam::123456789012:role/cellhub-hub"
PG = {"host": os.environ.get("PGHOST", "127.0.0.1"), "port": int(os.environ.get("PGPORT", "5432")), "user": "postgres"}


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, settings, tmp_path):
    """Fake credentials, no shared config, no instance metadata: nothing can reach AWS."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("CELLHUB_ROUTE53_ZONE_ID", raising=False)
    settings.CELLHUB = {**settings.CELLHUB, "CLOUD_BACKOFF": 0}


@pytest.fixture
def aws():
    with mock_aws():
        yield


@pytest.fixture
def reef(db):
    return make_reef(make_region(cloud="aws", location=REGION))


# -- RDS ------------------------------------------------------------------------------------


@pytest.fixture
def rds_driver(reef, aws, monkeypatch):
    monkeypatch.setenv("CELLHUB_POOL_SECRET_TEST_RDS", "Master-Passw0rd")
    pool = make_pool(reef, PoolKind.DATABASE, provider="aws_rds",
                     config={"master_password_env": "CELLHUB_POOL_SECRET_TEST_RDS", "instance_class": "db.t4g.small"})
    return RdsDatabaseDriver(pool)


def test_rds_provision_pool_creates_a_protected_encrypted_instance_once(rds_driver):
    result = rds_driver.provision_pool()
    rds = boto3.client("rds", region_name=REGION)
    (found,) = rds.describe_db_instances()["DBInstances"]
    assert found["DBInstanceIdentifier"] == rds_identifier(resource_name("p", rds_driver.pool.pk))
    assert result == {"external_id": found["DBInstanceArn"],
                      "config": {"db_instance_identifier": found["DBInstanceIdentifier"]}}
    assert found["DeletionProtection"] is True
    assert found["StorageEncrypted"] is True
    assert found["BackupRetentionPeriod"] == 7
    assert found["Engine"] == "postgres"
    assert found["DBInstanceClass"] == "db.t4g.small"
    assert found["PubliclyAccessible"] is False

    assert rds_driver.provision_pool() == result
    assert len(rds.describe_db_instances()["DBInstances"]) == 1


def test_rds_backup_without_a_backup_bucket_names_the_key_and_takes_no_snapshot(rds_driver):
    rds_driver.provision_pool()
    with pytest.raises(PermanentDriverError, match="backup_bucket"):
        rds_driver.backup_database(instance=make_instance(), label="nightly-2026-03-01")
    rds = boto3.client("rds", region_name=REGION)
    assert rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"] == []


def test_rds_retention_deletes_a_dump_and_an_older_manual_snapshot(rds_driver):
    rds_driver.provision_pool()
    s3, rds = boto3.client("s3", region_name=REGION), boto3.client("rds", region_name=REGION)
    s3.create_bucket(Bucket="acme-dumps")
    s3.put_bucket_versioning(Bucket="acme-dumps", VersioningConfiguration={"Status": "Enabled"})
    for body in (b"one", b"two"):
        s3.put_object(Bucket="acme-dumps", Key="p/i1/db/a.dump", Body=body)
    s3.put_object(Bucket="acme-dumps", Key="p/i1/db/b.dump", Body=b"kept")
    snapshot = rds.create_db_snapshot(DBSnapshotIdentifier="cellhub-i1-old", DBInstanceIdentifier=rds_driver.identifier)

    rds_driver.delete_backup(location="s3://acme-dumps/p/i1/db/a.dump")
    rds_driver.delete_backup(location=snapshot["DBSnapshot"]["DBSnapshotArn"])
    rds_driver.delete_backup(location="s3://acme-dumps/p/i1/db/a.dump")  # absent: fine

    versions = s3.list_object_versions(Bucket="acme-dumps")
    assert [v["Key"] for v in versions.get("Versions", [])] == ["p/i1/db/b.dump"]
    assert "DeleteMarkers" not in versions
    assert rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"] == []
    with pytest.raises(PermanentDriverError, match="not one of this driver's backups"):
        rds_driver.delete_backup(location="file:///tmp/x")


def test_rds_delete_pool_lifts_protection_and_keeps_a_final_snapshot(rds_driver):
    rds_driver.provision_pool()
    rds_driver.delete_pool()
    rds = boto3.client("rds", region_name=REGION)
    assert rds_driver.describe() is None
    snapshots = [s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots()["DBSnapshots"]]
    assert f"{rds_driver.identifier}-final" in snapshots
    rds_driver.delete_pool()  # absent: nothing to do


def test_rds_delete_pool_of_a_pool_made_twice_keeps_both_final_snapshots(rds_driver):
    """A top-up retried after its first instance was deleted makes the instance again under the same name: deleting
    that one (a retirement) keeps a second final snapshot beside the first instead of failing on the name."""
    rds = boto3.client("rds", region_name=REGION)
    rds_driver.provision_pool()
    # The first instance's final snapshot (made here directly: moto names the automated snapshot of a second instance
    # created within the same minute as the first's, and refuses it).
    rds.create_db_snapshot(DBSnapshotIdentifier=f"{rds_driver.identifier}-final",
                           DBInstanceIdentifier=rds_driver.identifier)
    rds_driver.delete_pool()
    assert rds_driver.describe() is None
    manual = rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
    snapshots = sorted(s["DBSnapshotIdentifier"] for s in manual)
    assert len(snapshots) == 2 and snapshots[0] == f"{rds_driver.identifier}-final"
    assert snapshots[1].startswith(f"{rds_driver.identifier}-final-")


def test_rds_admin_connection_uses_the_endpoint_and_the_password_from_the_environment(rds_driver):
    rds_driver.provision_pool()
    kwargs = rds_driver.admin_connect_kwargs()
    endpoint = rds_driver.describe()["Endpoint"]
    assert (kwargs["host"], kwargs["port"]) == (endpoint["Address"], endpoint["Port"])
    assert kwargs["user"] == "cellhub_admin" and kwargs["password"] == "Master-Passw0rd"
    assert kwargs["sslmode"] == "require" and kwargs["dbname"] == "postgres"
    instance = make_instance()
    credentials = rds_driver.credentials(instance)
    assert credentials.url == (
        f"postgresql://{credentials.login}:{rds_driver.password(instance)}@{endpoint['Address']}:"
        f"{endpoint['Port']}/{rds_driver.database_name(instance)}?sslmode=require"
    )


def test_rds_without_the_master_password_names_the_variable(reef, aws, monkeypatch):
    monkeypatch.delenv("CELLHUB_POOL_SECRET_TEST_RDS", raising=False)
    pool = make_pool(reef, PoolKind.DATABASE, provider="aws_rds",
                     config={"master_password_env": "CELLHUB_POOL_SECRET_TEST_RDS"})
    with pytest.raises(PermanentDriverError, match="CELLHUB_POOL_SECRET_TEST_RDS"):
        RdsDatabaseDriver(pool).provision_pool()
    assert boto3.client("rds", region_name=REGION).describe_db_instances()["DBInstances"] == []


def test_rds_without_aws_credentials_says_what_to_set(reef, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    pool = make_pool(reef, PoolKind.DATABASE, provider="aws_rds",
                     config={"master_password_env": "CELLHUB_POOL_SECRET_X"})
    with pytest.raises(PermanentDriverError, match="AWS credentials not found: set AWS_ACCESS_KEY_ID"):
        RdsDatabaseDriver(pool).describe()


def test_rds_throttled_twice_then_one_instance(rds_driver):
    """moto cannot throttle: Stubber answers 429 Throttling twice, then the instance."""
    rds = rds_driver._client("rds")
    identifier = rds_driver.identifier
    with Stubber(rds) as stub:
        stub.add_client_error("describe_db_instances", service_error_code="DBInstanceNotFound",
                              http_status_code=404, expected_params={"DBInstanceIdentifier": identifier})
        for _ in range(2):
            stub.add_client_error("create_db_instance", service_error_code="Throttling", http_status_code=429)
        stub.add_response("create_db_instance", {"DBInstance": {"DBInstanceIdentifier": identifier,
                                                                "DBInstanceArn": f"arn:aws:rds:::db:{identifier}"}})
        result = rds_driver.provision_pool()
        stub.assert_no_pending_responses()
    assert result["external_id"] == f"arn:aws:rds:::db:{identifier}"


def test_instance_database_sql_on_a_real_postgresql(db):
    """The statements RDS gets, run on the local PostgreSQL: the login reaches its database and no other."""
    instance, other = make_instance(), make_instance()
    pool = make_pool(kind=PoolKind.DATABASE, provider="aws_rds", config={})
    driver = RdsDatabaseDriver(pool)
    admin = {**PG, "dbname": "postgres", "connect_timeout": 5}
    names = [(driver.database_name(i), driver.login_name(i), driver.password(i)) for i in (instance, other)]
    try:
        for database, login, password in names:
            ensure_instance_database(admin, database=database, login=login, password=password)
            ensure_instance_database(admin, database=database, login=login, password=password)  # a repeat is fine
        (database, login, password), (other_database, _, _) = names
        with psycopg.connect(host=PG["host"], port=PG["port"], user=login, password=password, dbname=database) as own:
            assert own.execute("SELECT current_user").fetchone()[0] == login
            own.execute("CREATE TABLE t (id int)")  # the owner may create its schema
        with pytest.raises(psycopg.OperationalError, match="permission denied|not have CONNECT"):
            psycopg.connect(host=PG["host"], port=PG["port"], user=login, password=password, dbname=other_database)
    finally:
        for database, login, _ in names:
            drop_instance_database(admin, database=database, login=login)
    with psycopg.connect(**admin) as check:
        left = check.execute("SELECT count(*) FROM pg_database WHERE datname = ANY(%s)",
                             [[n[0] for n in names]]).fetchone()[0]
        assert left == 0
    drop_instance_database(admin, database=names[0][0], login=names[0][1])  # absent: no error


def test_rds_identifier_rules():
    assert rds_identifier("cellhub_i42_restore_1") == "cellhub-i42-restore-1"
    assert rds_identifier("42__x") == "c-42-x"
    assert len(rds_identifier("a" * 100)) == 63


# -- Storage Gateway ------------------------------------------------------------------------


@pytest.fixture
def kms_key(aws):
    return boto3.client("kms", region_name=REGION).create_key(Description="test")["KeyMetadata"]["Arn"]


def _gateway_pool(reef, kms_key, **config):
    """A gateway pool in moto's account."""
    base = {"gateway_arn": GATEWAY, "role_arn": ROLE, "kms_key_arn": kms_key, "bucket_prefix": "acme-",
            "archive_bucket": "acme-deep-archive"}
    return make_pool(reef, PoolKind.STORAGE, provider="aws_storage_gateway", config={**base, **config})


def _nfs_params(driver, share, gateway=GATEWAY, client=NO_CLIENT):
    bucket = driver.bucket_name(share)
    return {
        "ClientToken": f"{resource_name('s', share.pk)}-{gateway.rsplit('/', 1)[-1]}",
        "NFSFileShareDefaults": {"FileMode": "0664", "DirectoryMode": "0775", "GroupId": 65534, "OwnerId": 65534},
        "GatewayARN": gateway,
        "EncryptionType": "SseKms",
        "KMSEncrypted": True,
        "KMSKey": driver.kms_key_arn(),
        "Role": ROLE,
        "LocationARN": f"arn:aws:s3:::{bucket}",
        "DefaultStorageClass": "S3_STANDARD",
        "ObjectACL": "bucket-owner-full-control",
        "ClientList": [client],
        "Squash": "RootSquash",
        "ReadOnly": False,
        "FileShareName": bucket,
        "Tags": [{"Key": "cellhub-share", "Value": str(share.pk)}, {"Key": "cellhub-status", "Value": "available"}],
    }


def _share_arn(share, gateway=GATEWAY):
    return f"{gateway}/share/share-{share.pk:08X}"


def _stub_listing(stub, driver, shares, gateway=GATEWAY, status="AVAILABLE"):
    """list_file_shares + describe_nfs_file_shares answering that ``shares`` exist on ``gateway``."""
    stub.add_response(
        "list_file_shares",
        {"FileShareInfoList": [{"FileShareType": "NFS", "FileShareARN": _share_arn(s, gateway)} for s in shares]},
        {"GatewayARN": gateway},
    )
    if shares:
        stub.add_response(
            "describe_nfs_file_shares",
            {"NFSFileShareInfoList": [
                {"FileShareARN": _share_arn(s, gateway), "GatewayARN": gateway, "FileShareStatus": status,
                 "LocationARN": f"arn:aws:s3:::{driver.bucket_name(s)}"} for s in shares
            ]},
            {"FileShareARNList": [_share_arn(s, gateway) for s in shares]},
        )


def test_gateway_provision_pool_makes_encrypted_buckets_and_nfs_shares(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key, admin_principal_arns=[HUB]))
    shares = list(driver.pool.shares.order_by("slot"))
    assert len(shares) == 10
    sgw = driver._client("storagegateway")
    with Stubber(sgw) as stub:
        stub.add_response("describe_gateway_information", {"GatewayARN": GATEWAY}, {"GatewayARN": GATEWAY})
        stub.add_response("describe_cache", {"GatewayARN": GATEWAY, "DiskIds": []}, {"GatewayARN": GATEWAY})
        stub.add_response("list_local_disks", {"GatewayARN": GATEWAY, "Disks": [
            {"DiskId": "pci-0000:03:00.0-scsi-0:0:1:0", "DiskAllocationType": "AVAILABLE"},
            {"DiskId": "pci-0000:03:00.0-scsi-0:0:0:0", "DiskAllocationType": "USED"},
        ]}, {"GatewayARN": GATEWAY})
        stub.add_response("add_cache", {"GatewayARN": GATEWAY},
                          {"GatewayARN": GATEWAY, "DiskIds": ["pci-0000:03:00.0-scsi-0:0:1:0"]})
        _stub_listing(stub, driver, [])
        for share in shares:
            stub.add_response("create_nfs_file_share", {"FileShareARN": _share_arn(share)},
                              _nfs_params(driver, share))
        result = driver.provision_pool()
        stub.assert_no_pending_responses()

    assert result == {"external_id": GATEWAY, "config": {"gateway_arn": GATEWAY, "kms_key_arn": kms_key}}
    s3 = boto3.client("s3", region_name=REGION)
    buckets = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
    assert buckets == sorted(f"acme-{share.name}" for share in shares)
    for bucket in buckets:
        (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key}
        assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == bucket_policy(
            bucket=bucket, role_arn=ROLE, admin_arns=[HUB]
        )
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(block.values())


def test_bucket_policy_lets_in_the_gateway_role_and_the_hub_only():
    policy = bucket_policy(bucket="b", role_arn=ROLE, admin_arns=[HUB])
    deny_others = next(s for s in policy["Statement"] if s["Sid"] == "DenyAllButTheGatewayRoleAndTheHub")
    assert deny_others["Effect"] == "Deny"
    assert deny_others["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": [ROLE, HUB]}}
    allow = next(s for s in policy["Statement"] if s["Effect"] == "Allow")
    assert allow["Principal"] == {"AWS": ROLE}
    assert allow["Resource"] == ["arn:aws:s3:::b", "arn:aws:s3:::b/*"]
    assert role_arn_of("arn:aws:sts::123456789012:assumed-role/cellhub-hub/worker-1") == HUB


def test_gateway_activation_when_no_gateway_is_known(reef, kms_key):
    pool = _gateway_pool(reef, kms_key, gateway_arn="", activation_key="ABCDE-12345-FGHIJ-67890-KLMNO")
    pool.shares.all().delete()
    driver = StorageGatewayDriver(pool)
    with Stubber(driver._client("storagegateway")) as stub:
        stub.add_response("list_gateways", {"Gateways": [{"GatewayARN": NEW_GATEWAY, "GatewayName": "other"}]}, {})
        stub.add_response("activate_gateway", {"GatewayARN": GATEWAY}, {
            "ActivationKey": "ABCDE-12345-FGHIJ-67890-KLMNO",
            "GatewayName": resource_name("p", pool.pk),
            "GatewayTimezone": "GMT",
            "GatewayRegion": REGION,
            "GatewayType": "FILE_S3",
            "Tags": [{"Key": "cellhub-pool", "Value": str(pool.pk)}],
        })
        assert driver.ensure_gateway() == GATEWAY
        stub.assert_no_pending_responses()


def test_gateway_without_arn_or_activation_key_names_both(reef, kms_key):
    pool = _gateway_pool(reef, kms_key, gateway_arn="")
    driver = StorageGatewayDriver(pool)
    with Stubber(driver._client("storagegateway")) as stub:
        stub.add_response("list_gateways", {"Gateways": []}, {})
        with pytest.raises(PermanentDriverError, match="gateway_arn .*activation_key .*or subnet_id"):
            driver.provision_pool()


def test_gateway_set_firewall_updates_the_client_list(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=3)
    with Stubber(driver._client("storagegateway")) as stub:
        _stub_listing(stub, driver, [share])
        stub.add_response("update_nfs_file_share", {"FileShareARN": _share_arn(share)},
                          {"FileShareARN": _share_arn(share), "ClientList": ["10.20.30.40"]})
        _stub_listing(stub, driver, [share])
        stub.add_response("update_nfs_file_share", {"FileShareARN": _share_arn(share)},
                          {"FileShareARN": _share_arn(share), "ClientList": [NO_CLIENT]})
        driver.set_firewall(share=share, address="10.20.30.40")
        driver.set_firewall(share=share, address="")
        stub.assert_no_pending_responses()


def test_gateway_create_share_throttled_twice_then_created_once(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=0)
    with Stubber(driver._client("storagegateway")) as stub:
        _stub_listing(stub, driver, [])
        for _ in range(2):
            stub.add_client_error("create_nfs_file_share", service_error_code="ThrottlingException",
                                  http_status_code=429, expected_params=_nfs_params(driver, share))
        stub.add_response("create_nfs_file_share", {"FileShareARN": _share_arn(share)}, _nfs_params(driver, share))
        stub.add_response("describe_gateway_information",
                          {"GatewayARN": GATEWAY, "GatewayNetworkInterfaces": [{"Ipv4Address": "10.0.0.5"}]},
                          {"GatewayARN": GATEWAY})
        endpoint = driver.create_share(share=share)
        stub.assert_no_pending_responses()  # and Stubber refuses any further create
    assert endpoint == f"nfs://10.0.0.5/acme-{share.name}"
    s3 = boto3.client("s3", region_name=REGION)
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [f"acme-{share.name}"]


def test_gateway_create_share_throttled_without_end_is_transient(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=0)
    with Stubber(driver._client("storagegateway")) as stub:
        _stub_listing(stub, driver, [])
        for _ in range(5):
            stub.add_client_error("create_nfs_file_share", service_error_code="ThrottlingException",
                                  http_status_code=429)
        with pytest.raises(TransientDriverError, match="create NFS file share .* after 5 attempts"):
            driver.create_share(share=share)
        stub.assert_no_pending_responses()


def _plain_bucket(bucket):
    """A versioned bucket without the driver's policy: moto applies a policy's Deny statements whatever their
    conditions (even ``aws:SecureTransport``), so the tests that move data use buckets without one."""
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def _put_files(bucket, files):
    s3 = boto3.client("s3", region_name=REGION)
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def test_gateway_archive_zips_the_bucket_to_deep_archive(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=0)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="acme-deep-archive")
    _plain_bucket(driver.bucket_name(share))
    files = {"config/server.json": b'{"a": 1}', "logs/2026/03/01.log": b"hello\n" * 1000, "folder/": b""}
    _put_files(driver.bucket_name(share), files)

    uploads = []  # moto neither stores nor checks ChecksumSHA256: look at the request itself
    driver._client("s3").meta.events.register(
        "provide-client-params.s3.PutObject", lambda params, **kwargs: uploads.append(dict(params))
    )
    with Stubber(driver._client("storagegateway")) as stub:
        stub.add_response("describe_cache", {"GatewayARN": GATEWAY, "CacheDirtyPercentage": 0.0},
                          {"GatewayARN": GATEWAY})
        result = driver.archive_share(share=share, label="final")
        stub.assert_no_pending_responses()

    key = f"{share.name}/final.zip"
    assert result.location == f"s3://acme-deep-archive/{key}"
    head = s3.head_object(Bucket="acme-deep-archive", Key=key, ChecksumMode="ENABLED")
    assert head["StorageClass"] == "DEEP_ARCHIVE"
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == kms_key
    with pytest.raises(s3.exceptions.InvalidObjectState):  # deep archive: readable only once restored
        s3.get_object(Bucket="acme-deep-archive", Key=key)
    s3.restore_object(Bucket="acme-deep-archive", Key=key, RestoreRequest={"Days": 1})
    stored = s3.get_object(Bucket="acme-deep-archive", Key=key, ChecksumMode="ENABLED")
    data = stored["Body"].read()
    assert hashlib.sha256(data).hexdigest() == result.checksum == stored["Metadata"]["sha256"]
    (upload,) = uploads
    assert upload["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert result.size_bytes == len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["config/server.json", "logs/2026/03/01.log"]
        assert archive.read("logs/2026/03/01.log") == files["logs/2026/03/01.log"]

    # The same label finds the archive: no second upload, no gateway call.
    with Stubber(driver._client("storagegateway")):
        assert driver.archive_share(share=share, label="final") == result


def test_gateway_archive_waits_for_the_gateway_to_finish_uploading(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=0)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket="acme-deep-archive")
    with Stubber(driver._client("storagegateway")) as stub:
        stub.add_response("describe_cache", {"GatewayARN": GATEWAY, "CacheDirtyPercentage": 12.5},
                          {"GatewayARN": GATEWAY})
        with pytest.raises(TransientDriverError, match="still uploading"):
            driver.archive_share(share=share, label="final")


def test_gateway_scrub_deletes_every_version_and_refreshes_the_cache(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=1)
    bucket = driver.bucket_name(share)
    _plain_bucket(bucket)
    s3 = boto3.client("s3", region_name=REGION)
    _put_files(bucket, {"a.txt": b"1", "b/c.txt": b"2"})
    _put_files(bucket, {"a.txt": b"1 again"})
    s3.delete_object(Bucket=bucket, Key="b/c.txt")  # a delete marker over a version
    listing = s3.list_object_versions(Bucket=bucket)
    assert len(listing["Versions"]) == 3 and len(listing["DeleteMarkers"]) == 1

    with Stubber(driver._client("storagegateway")) as stub:
        _stub_listing(stub, driver, [share])
        stub.add_response("refresh_cache", {"FileShareARN": _share_arn(share)},
                          {"FileShareARN": _share_arn(share), "FolderList": ["/"], "Recursive": True})
        driver.scrub_share(share=share)
        stub.assert_no_pending_responses()

    listing = s3.list_object_versions(Bucket=bucket)
    assert "Versions" not in listing and "DeleteMarkers" not in listing


def test_gateway_replace_pool_reassociates_the_same_buckets(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    shares = list(driver.pool.shares.order_by("slot"))
    held = shares[2]
    held.firewall_address = "10.9.8.7"
    held.save(update_fields=["firewall_address"])
    with Stubber(driver._client("storagegateway")) as stub:
        # a cache exists: DescribeCache names its disks, and no disk is added (ListLocalDisks is not even asked)
        stub.add_response("describe_cache", {**DESCRIBE_CACHE, "GatewayARN": NEW_GATEWAY}, {"GatewayARN": NEW_GATEWAY})
        _stub_listing(stub, driver, [], gateway=NEW_GATEWAY)
        for share in shares:
            client = "10.9.8.7" if share.pk == held.pk else NO_CLIENT
            stub.add_response("create_nfs_file_share", {"FileShareARN": _share_arn(share, NEW_GATEWAY)},
                              _nfs_params(driver, share, gateway=NEW_GATEWAY, client=client))
            if share is shares[0]:
                stub.add_response("describe_gateway_information", {
                    "GatewayARN": NEW_GATEWAY, "GatewayNetworkInterfaces": [{"Ipv4Address": "10.0.0.99"}]},
                    {"GatewayARN": NEW_GATEWAY})
        result = driver.replace_pool(NEW_GATEWAY)
        stub.assert_no_pending_responses()
    assert result["external_id"] == NEW_GATEWAY
    assert result["endpoints"] == {share.name: f"nfs://10.0.0.99/acme-{share.name}" for share in shares}


def test_gateway_delete_share_keeps_a_bucket_with_data(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=0)
    bucket = driver.bucket_name(share)
    _plain_bucket(bucket)
    _put_files(bucket, {"keep.txt": b"data"})
    with Stubber(driver._client("storagegateway")) as stub:
        _stub_listing(stub, driver, [share])
        stub.add_response("delete_file_share", {"FileShareARN": _share_arn(share)},
                          {"FileShareARN": _share_arn(share)})
        with pytest.raises(PermanentDriverError, match="still holds data"):
            driver.delete_share(share=share)
    assert boto3.client("s3", region_name=REGION).head_bucket(Bucket=bucket)


def test_gateway_kms_key_is_created_once_under_the_pools_alias(reef, aws):
    pool = make_pool(reef, PoolKind.STORAGE, provider="aws_storage_gateway", config={"gateway_arn": GATEWAY})
    first = StorageGatewayDriver(pool).kms_key_arn()
    second = StorageGatewayDriver(pool).kms_key_arn()
    assert first == second
    kms = boto3.client("kms", region_name=REGION)
    assert kms.describe_key(KeyId=f"alias/{resource_name('p', pool.pk)}")["KeyMetadata"]["Arn"] == first
    assert len(kms.list_keys()["Keys"]) == 1


# -- Route 53 -------------------------------------------------------------------------------


def _records(zone_id):
    sets = boto3.client("route53").list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    return {(s["Name"], s["Type"]): [r["Value"] for r in s.get("ResourceRecords", [])] for s in sets
            if s["Type"] in ("A", "AAAA", "CNAME")}


def test_route53_upsert_replace_lookup_list_delete(reef, aws):
    route53 = boto3.client("route53")
    route53.create_hosted_zone(Name="example.com.", CallerReference="parent")
    zone_id = route53.create_hosted_zone(Name="cells.example.com.", CallerReference="hub")["HostedZone"]["Id"]
    driver = Route53DnsDriver(reef.region, "cells.example.com")

    driver.upsert_record(name="acme", address="203.0.113.5")
    assert driver.zone_id == zone_id.removeprefix("/hostedzone/")  # the nearest zone, found by name
    assert _records(zone_id) == {("acme.cells.example.com.", "A"): ["203.0.113.5"]}

    driver.upsert_record(name="acme", address="203.0.113.5")  # a repeat changes nothing
    driver.upsert_record(name="beta", address="lb-1.elb.amazonaws.com")
    driver.upsert_record(name="acme", address="lb-2.elb.amazonaws.com")  # the A record gives way to a CNAME
    assert _records(zone_id) == {
        ("acme.cells.example.com.", "CNAME"): ["lb-2.elb.amazonaws.com"],
        ("beta.cells.example.com.", "CNAME"): ["lb-1.elb.amazonaws.com"],
    }
    assert driver.lookup(name="acme") == "lb-2.elb.amazonaws.com"
    assert driver.lookup(name="nobody") is None
    assert driver.list_records() == {"acme": "lb-2.elb.amazonaws.com", "beta": "lb-1.elb.amazonaws.com"}

    driver.delete_record(name="acme")
    driver.delete_record(name="acme")  # absent: nothing to do
    assert _records(zone_id) == {("beta.cells.example.com.", "CNAME"): ["lb-1.elb.amazonaws.com"]}


def test_route53_zone_from_the_environment(reef, aws, monkeypatch):
    zone_id = boto3.client("route53").create_hosted_zone(Name="example.com.", CallerReference="x")["HostedZone"]["Id"]
    monkeypatch.setenv("CELLHUB_ROUTE53_ZONE_ID", zone_id)
    driver = Route53DnsDriver(reef.region, "cells.example.com")
    driver.upsert_record(name="acme", address="2001:db8::5")
    assert _records(zone_id) == {("acme.cells.example.com.", "AAAA"): ["2001:db8::5"]}


def test_route53_without_a_zone_names_the_variable(reef, aws):
    with pytest.raises(PermanentDriverError, match="CELLHUB_ROUTE53_ZONE_ID"):
        Route53DnsDriver(reef.region, "cells.example.com").upsert_record(name="acme", address="203.0.113.5")
