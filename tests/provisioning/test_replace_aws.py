"""Replacing a failed AWS Storage Gateway through the replace operation: moto plays S3 (the data), botocore's
Stubber the Storage Gateway API (moto has none) with the exact requests each call must make. The buckets and
every object in them survive; the new gateway serves the same buckets with the same client lists."""
import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from cells.choices import InstanceState, OperationState, PoolKind, PoolStatus, ShareStatus
from cells.models import Pool, Share
from provisioning import drivers
from provisioning.capacity import pool_mark_failed, pool_replace
from provisioning.drivers.aws_storage_gateway import NO_CLIENT, StorageGatewayDriver
from provisioning.drivers.base import resource_name
from tests.factories import make_cell, make_instance, make_pool, make_reef, make_region
from tests.provisioning.aws_offline import offline_aws

pytestmark = pytest.mark.django_db
REGION = "us-east-1"
GATEWAY = f"arn:aws:storagegateway:{REGION}:123456789012:gateway/sgw-12A3456B"
NEW_GATEWAY = f"arn:aws:storagegateway:{REGION}:123456789012:gateway/sgw-99Z9999Z"
ROLE = "arn:aws:iam::123456789012:role/cellhub-gateway"
# DescribeCache's answer in the SDK's own example: the cache disks are named by DiskIds.
DESCRIBE_CACHE = {"CacheAllocatedInBytes": 2199023255552, "CacheDirtyPercentage": 0.07, "CacheHitPercentage": 99.68,
                  "CacheMissPercentage": 0.32, "CacheUsedPercentage": 0.07,
                  "DiskIds": ["pci-0000:03:00.0-scsi-0:0:0:0", "pci-0000:04:00.0-scsi-0:1:0:0"]}


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    """Fake credentials, no shared config, no instance metadata: nothing can reach AWS."""
    offline_aws(monkeypatch, tmp_path, REGION)


@pytest.fixture
def gateway_api(monkeypatch):
    """moto for everything but Storage Gateway, whose one client (shared by every driver the plan makes) is stubbed."""
    with mock_aws():
        real_client = boto3.client
        storagegateway = real_client("storagegateway", region_name=REGION)
        monkeypatch.setattr(
            boto3, "client",
            lambda service, *args, **kwargs: storagegateway if service == "storagegateway"
            else real_client(service, *args, **kwargs),
        )
        with Stubber(storagegateway) as stub:
            yield stub


def _nfs_params(driver, share, gateway, client):
    bucket = driver.bucket_name(share)
    return {
        "ClientToken": f"{resource_name('s', share.pk)}-{gateway.rsplit('/', 1)[-1]}",
        "NFSFileShareDefaults": {"FileMode": "0664", "DirectoryMode": "0775", "GroupId": 65534, "OwnerId": 65534},
        "GatewayARN": gateway, "EncryptionType": "SseKms", "KMSEncrypted": True, "KMSKey": driver.kms_key_arn(),
        "Role": ROLE, "LocationARN": f"arn:aws:s3:::{bucket}", "DefaultStorageClass": "S3_STANDARD",
        "ObjectACL": "bucket-owner-full-control", "ClientList": [client], "Squash": "RootSquash", "ReadOnly": False,
        "FileShareName": bucket,
        "Tags": [{"Key": "cellhub-share", "Value": str(share.pk)}, {"Key": "cellhub-status", "Value": "available"}],
    }


def test_replace_reassociates_the_same_buckets_and_every_object_survives(
    gateway_api, sync_tasks, django_capture_on_commit_callbacks
):
    kms_key = boto3.client("kms", region_name=REGION).create_key(Description="test")["KeyMetadata"]["Arn"]
    cell = make_cell(make_reef(make_region(cloud="aws", location=REGION)))
    pool = make_pool(cell["reef"], PoolKind.STORAGE, provider="aws_storage_gateway", config={
        "gateway_arn": GATEWAY, "role_arn": ROLE, "kms_key_arn": kms_key, "bucket_prefix": "acme-",
    })
    old_driver = StorageGatewayDriver(pool)
    shares = list(pool.shares.order_by("slot"))
    instance = make_instance(reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"],
                             state=InstanceState.RUNNING)
    held = shares[2]
    Share.objects.filter(pk=held.pk).update(status=ShareStatus.ASSIGNED, instance=instance,
                                            firewall_address="10.9.8.7", endpoint=f"nfs://10.0.0.5/acme-{held.name}")
    held.refresh_from_db()
    s3 = boto3.client("s3", region_name=REGION)
    data = {}
    for share in shares:  # the buckets a top-up made (without the driver's policy: moto would enforce its Deny)
        bucket = old_driver.bucket_name(share)
        s3.create_bucket(Bucket=bucket)
        data[bucket] = {"config/server.json": f'{{"share": "{share.name}"}}'.encode(), "logs/a.log": b"x" * 70_000}
        for key, body in data[bucket].items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)

    pool_mark_failed(pool=pool, reason="gateway instance terminated")
    stub = gateway_api
    # host: the new gateway is found, has its cache, serves nothing yet.
    stub.add_response("describe_gateway_information", {"GatewayARN": NEW_GATEWAY}, {"GatewayARN": NEW_GATEWAY})
    stub.add_response("describe_cache", {**DESCRIBE_CACHE, "GatewayARN": NEW_GATEWAY}, {"GatewayARN": NEW_GATEWAY})
    stub.add_response("list_file_shares", {"FileShareInfoList": []}, {"GatewayARN": NEW_GATEWAY})
    # shares: every bucket gets an NFS file share on the new gateway, with its client list.
    stub.add_response("describe_cache", {**DESCRIBE_CACHE, "GatewayARN": NEW_GATEWAY}, {"GatewayARN": NEW_GATEWAY})
    stub.add_response("list_file_shares", {"FileShareInfoList": []}, {"GatewayARN": NEW_GATEWAY})
    for share in shares:
        client = "10.9.8.7" if share.pk == held.pk else NO_CLIENT
        stub.add_response("create_nfs_file_share", {"FileShareARN": f"{NEW_GATEWAY}/share/share-{share.pk:08X}"},
                          _nfs_params(old_driver, share, NEW_GATEWAY, client))
        if share is shares[0]:
            stub.add_response("describe_gateway_information", {
                "GatewayARN": NEW_GATEWAY, "GatewayNetworkInterfaces": [{"Ipv4Address": "10.0.0.99"}]},
                {"GatewayARN": NEW_GATEWAY})

    with django_capture_on_commit_callbacks(execute=True):
        operation = pool_replace(pool=pool, config={"gateway_arn": NEW_GATEWAY})
    operation.refresh_from_db()
    stub.assert_no_pending_responses()

    assert operation.state == OperationState.SUCCEEDED, operation.error
    new = Pool.objects.get(pk=operation.params["new_pool_id"])
    pool.refresh_from_db()
    assert (pool.status, new.status, new.external_id) == (PoolStatus.RETIRED, PoolStatus.AVAILABLE, NEW_GATEWAY)
    assert new.config == {"role_arn": ROLE, "kms_key_arn": kms_key, "bucket_prefix": "acme-",
                          "gateway_arn": NEW_GATEWAY}
    for share in Share.objects.filter(pk__in=[s.pk for s in shares]):
        assert share.pool_id == new.pk
        assert share.endpoint == f"nfs://10.0.0.99/acme-{share.name}"
    held.refresh_from_db()
    assert (held.instance_id, held.firewall_address, held.status) == (instance.pk, "10.9.8.7", ShareStatus.ASSIGNED)
    # Every bucket and every object in it survived, byte for byte.
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == sorted(data)
    for bucket, files in data.items():
        for key, body in files.items():
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    # The instance mounts the new gateway.
    manifests = drivers.for_pool(cell["compute"]).manifest_path(instance).read_text()
    assert "server: 10.0.0.99" in manifests and f"path: /acme-{held.name}" in manifests
