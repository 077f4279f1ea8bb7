"""Storage Gateway's fixes and point-in-time files on S3 versioning, at the SDK's wire: moto for S3 and KMS,
botocore's Stubber with exact parameters for Storage Gateway (answers as in the SDK's own examples)."""
from __future__ import annotations

import json

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.stub import Stubber

from provisioning.drivers.aws_storage_gateway import StorageGatewayDriver
from provisioning.drivers.base import PermanentDriverError, TransientDriverError
from provisioning.drivers.cloud_retry import cloud_call
from tests.provisioning.drivers import test_aws as shared
from tests.provisioning.drivers.test_aws import (
    DESCRIBE_CACHE,
    GATEWAY,
    REGION,
    _gateway_pool,
    _share_arn,
    _stub_listing,
)

# Fixtures shared with the AWS driver tests (pytest finds them by name in this module).
aws, aws_env, kms_key, reef = shared.aws, shared.aws_env, shared.kms_key, shared.reef


def _versioned_share(driver, share):
    s3 = boto3.client("s3", region_name=REGION)
    bucket = driver.bucket_name(share)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.create_bucket(Bucket=driver.config["archive_bucket"])
    s3.put_bucket_versioning(Bucket=driver.config["archive_bucket"], VersioningConfiguration={"Status": "Enabled"})
    return s3, bucket


def _clean_cache(stub):
    stub.add_response("describe_cache", {**DESCRIBE_CACHE, "CacheDirtyPercentage": 0.0, "GatewayARN": GATEWAY},
                      {"GatewayARN": GATEWAY})


def _files(s3, bucket):
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed}


def test_a_files_backup_is_the_versions_at_that_moment_and_a_restore_brings_exactly_them_back(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=0)
    s3, bucket = _versioned_share(driver, share)
    s3.put_object(Bucket=bucket, Key="logs/a.txt", Body=b"a-1")
    s3.put_object(Bucket=bucket, Key="packages/b.zip", Body=b"b-1")
    with Stubber(driver._client("storagegateway")) as stub:
        _clean_cache(stub)
        backup = driver.backup_share(share=share, label="daily-1")
        stub.assert_no_pending_responses()
    # later: a file changed, one deleted, one added
    s3.put_object(Bucket=bucket, Key="logs/a.txt", Body=b"a-2")
    s3.delete_object(Bucket=bucket, Key="packages/b.zip")
    s3.put_object(Bucket=bucket, Key="new.txt", Body=b"new")

    with Stubber(driver._client("storagegateway")) as stub:
        _stub_listing(stub, driver, [share])
        stub.add_response("refresh_cache", {"FileShareARN": _share_arn(share), "NotificationId": "n-1"},
                          {"FileShareARN": _share_arn(share), "FolderList": ["/"], "Recursive": True})
        driver.restore_share(share=share, location=backup.location)
        stub.assert_no_pending_responses()

    assert _files(s3, bucket) == {"logs/a.txt": b"a-1", "packages/b.zip": b"b-1"}
    assert backup.location == f"s3://acme-deep-archive/versions/{share.name}/daily-1.json"
    assert backup.extra["files"] == 2 and backup.size_bytes == 6
    head = s3.head_object(Bucket="acme-deep-archive", Key=f"versions/{share.name}/daily-1.json")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms_key
    assert head.get("StorageClass", "STANDARD") == "STANDARD"  # not DEEP_ARCHIVE: that is for decommission only
    # the newer data is not lost: it stays as versions behind the restored ones
    versions = s3.list_object_versions(Bucket=bucket, Prefix="new.txt")
    assert [v["Key"] for v in versions["Versions"]] == ["new.txt"] and versions["DeleteMarkers"]


def test_a_changed_manifest_is_refused_before_anything_changes(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=0)
    s3, bucket = _versioned_share(driver, share)
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a-1")
    with Stubber(driver._client("storagegateway")) as stub:
        _clean_cache(stub)
        backup = driver.backup_share(share=share, label="daily-1")
    key = backup.location.removeprefix("s3://acme-deep-archive/")
    manifest = json.loads(s3.get_object(Bucket="acme-deep-archive", Key=key)["Body"].read())
    manifest["objects"] = {}
    head = s3.head_object(Bucket="acme-deep-archive", Key=key)
    s3.put_object(Bucket="acme-deep-archive", Key=key, Body=json.dumps(manifest).encode(), Metadata=head["Metadata"])
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a-2")

    with pytest.raises(PermanentDriverError, match="changed since it was taken"):
        driver.restore_share(share=share, location=backup.location)
    assert _files(s3, bucket) == {"a.txt": b"a-2"}


def test_a_files_backup_waits_while_the_gateway_still_uploads(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=0)
    _versioned_share(driver, share)
    with Stubber(driver._client("storagegateway")) as stub:
        stub.add_response("describe_cache", {**DESCRIBE_CACHE, "GatewayARN": GATEWAY}, {"GatewayARN": GATEWAY})
        with pytest.raises(TransientDriverError, match="still uploading"):
            driver.backup_share(share=share, label="daily-1")


def test_retention_deletes_the_manifest_and_nothing_else(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=0)
    s3, bucket = _versioned_share(driver, share)
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a-1")
    with Stubber(driver._client("storagegateway")) as stub:
        _clean_cache(stub)
        _clean_cache(stub)
        old = driver.backup_share(share=share, label="daily-1")
        kept = driver.backup_share(share=share, label="daily-2")

    driver.delete_backup(location=old.location)
    driver.delete_backup(location=old.location)  # absent: fine

    listed = s3.list_object_versions(Bucket="acme-deep-archive")
    assert [v["Key"] for v in listed["Versions"]] == [kept.location.removeprefix("s3://acme-deep-archive/")]
    assert "DeleteMarkers" not in listed
    assert _files(s3, bucket) == {"a.txt": b"a-1"}


def test_share_buckets_expire_old_versions_by_a_lifecycle_rule(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key, admin_principal_arns=["arn:aws:iam::1:role/hub"],
                                                version_retention_days=40))
    driver.ensure_bucket("acme-s1")
    rules = boto3.client("s3", region_name=REGION).get_bucket_lifecycle_configuration(Bucket="acme-s1")["Rules"]
    assert rules[0]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 40}
    assert rules[0]["Status"] == "Enabled"


def test_a_file_share_is_updated_only_when_available(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=0)
    with Stubber(driver._client("storagegateway")) as stub:
        _stub_listing(stub, driver, [share], status="CREATING")
        with pytest.raises(TransientDriverError, match="CREATING"):
            driver.set_firewall(share=share, address="10.1.2.3")
        stub.assert_no_pending_responses()  # and no update_nfs_file_share was sent (the stub would have failed)


def test_an_offline_gateway_is_not_read_as_not_found(reef, kms_key):
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    with Stubber(driver._client("storagegateway")) as stub:
        stub.add_client_error(
            "describe_gateway_information", service_error_code="InvalidGatewayRequestException",
            service_message="The specified gateway is not connected.", http_status_code=400,
            modeled_fields={"error": {"errorCode": "GatewayNotConnected"}}, expected_params={"GatewayARN": GATEWAY},
        )
        stub.add_client_error(
            "describe_gateway_information", service_error_code="InvalidGatewayRequestException",
            service_message="The specified gateway was not found.", http_status_code=400,
            modeled_fields={"error": {"errorCode": "GatewayNotFound"}}, expected_params={"GatewayARN": GATEWAY},
        )
        with pytest.raises(TransientDriverError, match="GatewayNotConnected"):
            driver.ensure_gateway()
        with pytest.raises(PermanentDriverError, match="GatewayNotFound"):
            driver.ensure_gateway()


@pytest.mark.parametrize("code, status, error", [("SlowDown", 503, TransientDriverError),
                                                  ("AccessDenied", 403, PermanentDriverError)])
def test_an_s3_multipart_failure_is_classified_by_the_parts_error(aws, tmp_path, code, status, error):
    """boto3's ``upload_file`` wraps a failed part in ``S3UploadFailedError``: it reads as the part's own error."""
    s3 = boto3.client("s3", region_name=REGION)
    path = tmp_path / "archive.zip"
    path.write_bytes(b"x" * (11 * 1024 * 1024))
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024,
                            max_concurrency=1, use_threads=False)
    with Stubber(s3) as stub:
        stub.add_response("create_multipart_upload", {"Bucket": "acme-archive", "Key": "k", "UploadId": "u-1"})
        stub.add_client_error("upload_part", service_error_code=code, http_status_code=status)
        stub.add_response("abort_multipart_upload", {})
        with pytest.raises(error, match=f"S3 upload failed: .*{code}"):
            cloud_call("upload", lambda: s3.upload_file(str(path), "acme-archive", "k", Config=config), attempts=1)


def _gateway_gone(stub):
    stub.add_client_error(
        "list_file_shares", service_error_code="InvalidGatewayRequestException",
        service_message="The specified gateway was not found.", http_status_code=400,
        modeled_fields={"error": {"errorCode": "GatewayNotFound"}}, expected_params={"GatewayARN": GATEWAY},
    )


def test_deleting_a_pool_and_its_shares_once_the_gateway_is_gone_deletes_the_buckets_and_asks_nothing_more(
        reef, kms_key):
    """Absent is fine: a retirement repeated after the gateway went (deleted by the first attempt, or by AWS) finds no
    file share to delete and still deletes each share's empty bucket."""
    driver = StorageGatewayDriver(_gateway_pool(reef, kms_key))
    share = driver.pool.shares.get(slot=0)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=driver.bucket_name(share))
    with Stubber(driver._client("storagegateway")) as stub:
        _gateway_gone(stub)
        _gateway_gone(stub)
        driver.delete_share(share=share)
        driver.delete_pool()
        stub.assert_no_pending_responses()  # and no DeleteFileShare was sent (the stub would have refused it)
    assert driver.bucket_name(share) not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
