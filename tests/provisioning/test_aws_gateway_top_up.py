"""An automatic storage top-up on AWS makes a whole Storage Gateway, through the hub's services as the capacity pass
drives them: the appliance (EC2 from the AMI in an SSM parameter), its security group, its activation key fetched
from the appliance over HTTP, the activation, its cache, a DNS record, then ten buckets with their policies and ten
file shares tagged available. A failure at activation leaves nothing behind.

moto plays EC2, SSM, S3, KMS, STS and Route 53; botocore's Stubber the Storage Gateway API (moto has none) with the
exact requests each call must make and answers shaped as in the SDK's own examples (file shares ``CREATING``);
a small HTTP server on a loopback address stands in for the appliance's activation page. moto gives the first
instance of the 127.0.0.0/28 subnet the address 127.0.0.4, where that server listens.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from botocore.stub import Stubber
from django.db import connection
from moto import mock_aws

from cells.choices import InstanceState, OperationState, PoolKind, PoolStatus, ShareStatus
from cells.models import Pool, Share
from cells.services import share_name
from provisioning import drivers
from provisioning.capacity import reef_top_up
from provisioning.drivers.aws_gateway_appliance import AMI_PARAMETER
from provisioning.drivers.aws_storage_gateway import NO_CLIENT
from provisioning.drivers.base import resource_name
from tests.factories import make_cell, make_instance, make_pool
from tests.provisioning.aws_offline import offline_aws

pytestmark = pytest.mark.django_db
REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/cellhub-gateway"
HUB = "arn:aws:iam::123456789012:role/cellhub-hub"
NEW_GATEWAY = f"arn:aws:storagegateway:{REGION}:111122223333:gateway/sgw-11A2222B"  # ActivateGateway's example
ACTIVATION_KEY = "29AV1-3OFV9-VVIUB-NKT0I-LRO6V"  # the SDK example's key
APPLIANCE_ADDRESS = "127.0.0.4"
AMI_TEST_PARAMETER = "/cellhub/test/storagegateway/ami"  # moto refuses writes under /aws/service


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    offline_aws(monkeypatch, tmp_path, REGION)


@pytest.fixture
def appliance():
    """The gateway appliance's activation page: answers the key to ``?activationRegion=…&no_redirect``."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            query = parse_qs(urlparse(self.path).query, keep_blank_values=True)
            ok = query.get("activationRegion") == [REGION] and "no_redirect" in query
            body = (ACTIVATION_KEY if ok else "bad request").encode()
            self.send_response(200 if ok else 400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((APPLIANCE_ADDRESS, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"port": server.server_address[1], "requests": requests}
    server.shutdown()
    server.server_close()


@pytest.fixture
def gateway_api(monkeypatch, settings):
    """moto for everything but Storage Gateway, whose one client (shared by every driver the plan makes) is stubbed."""
    with mock_aws():
        real_client = boto3.client
        storagegateway = real_client("storagegateway", region_name=REGION)
        monkeypatch.setattr(
            boto3, "client",
            lambda service, *args, **kwargs: storagegateway if service == "storagegateway"
            else real_client(service, *args, **kwargs),
        )
        real_client("route53").create_hosted_zone(Name=settings.CELLHUB["HUB_DOMAIN"], CallerReference="hub")
        with Stubber(storagegateway) as stub:
            yield stub


@pytest.fixture
def aws_reef(gateway_api, appliance):
    """An AWS reef low on storage: its Storage Gateway pool (the template) has 2 free shares of 10."""
    ec2, ssm = boto3.client("ec2", region_name=REGION), boto3.client("ssm", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/28")["Subnet"]["SubnetId"]
    image = ec2.describe_images()["Images"][0]["ImageId"]
    ssm.put_parameter(Name=AMI_TEST_PARAMETER, Value=image, Type="String")
    kms_key = boto3.client("kms", region_name=REGION).create_key(Description="pool")["KeyMetadata"]["Arn"]
    cell = make_cell(capacity=40, reef=None)
    reef = cell["reef"]
    reef.region.cloud, reef.region.location = "aws", REGION
    reef.region.save(update_fields=["cloud", "location"])
    Pool.objects.filter(pk=cell["storage"].pk).update(status=PoolStatus.RETIRED)
    template = make_pool(reef, PoolKind.STORAGE, provider="aws_storage_gateway", capacity=10, config={
        "gateway_arn": "arn:aws:storagegateway:us-east-1:111122223333:gateway/sgw-OLD00000",
        "gateway_instance_id": "i-0123456789abcdef0", "security_group_id": "sg-0old",
        "role_arn": ROLE, "kms_key_arn": kms_key, "bucket_prefix": "acme-", "archive_bucket": "acme-archive",
        "admin_principal_arns": [HUB], "subnet_id": subnet, "activation_cidr": "10.0.0.0/16",
        "gateway_ami_parameter": AMI_TEST_PARAMETER, "activation_port": appliance["port"],
        "waiter_delay_seconds": 1, "waiter_max_attempts": 3,
    })
    for share in template.shares.order_by("slot")[:8]:
        instance = make_instance(reef=reef, state=InstanceState.RUNNING)
        Share.objects.filter(pk=share.pk).update(status=ShareStatus.ASSIGNED, instance=instance)
    return {"reef": reef, "template": template, "image": image, "subnet": subnet, "vpc": vpc, "kms_key": kms_key}


def _activation(stub, pool):
    stub.add_response("list_gateways", {"Gateways": []}, {})
    stub.add_response("activate_gateway", {"GatewayARN": NEW_GATEWAY}, {
        "ActivationKey": ACTIVATION_KEY, "GatewayName": resource_name("p", pool.pk), "GatewayTimezone": "GMT",
        "GatewayRegion": REGION, "GatewayType": "FILE_S3", "Tags": [{"Key": "cellhub-pool", "Value": str(pool.pk)}],
    })


def _activation_failing(stub, pool):
    stub.add_response("list_gateways", {"Gateways": []}, {})
    stub.add_client_error(
        "activate_gateway", service_error_code="InvalidGatewayRequestException", http_status_code=400,
        service_message="The activation key has expired.",
        modeled_fields={"error": {"errorCode": "ActivationKeyExpired"}},
        expected_params={"ActivationKey": ACTIVATION_KEY, "GatewayName": resource_name("p", pool.pk),
                         "GatewayTimezone": "GMT", "GatewayRegion": REGION, "GatewayType": "FILE_S3",
                         "Tags": [{"Key": "cellhub-pool", "Value": str(pool.pk)}]},
    )


def _nfs_params(share, kms_key):
    bucket = f"acme-{share.name}"
    return {
        "ClientToken": f"{resource_name('s', share.pk)}-{NEW_GATEWAY.rsplit('/', 1)[-1]}",
        "NFSFileShareDefaults": {"FileMode": "0664", "DirectoryMode": "0775", "GroupId": 65534, "OwnerId": 65534},
        "GatewayARN": NEW_GATEWAY, "EncryptionType": "SseKms", "KMSEncrypted": True, "KMSKey": kms_key,
        "Role": ROLE, "LocationARN": f"arn:aws:s3:::{bucket}", "DefaultStorageClass": "S3_STANDARD",
        "ObjectACL": "bucket-owner-full-control", "ClientList": [NO_CLIENT], "Squash": "RootSquash", "ReadOnly": False,
        "FileShareName": bucket,
        "Tags": [{"Key": "cellhub-share", "Value": str(share.pk)}, {"Key": "cellhub-status", "Value": "available"}],
    }


def _share_arn(share):
    return f"{NEW_GATEWAY}/share/share-{share.pk:08X}"


def _run_top_up(run_reef, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        (operation,) = reef_top_up(reef=run_reef)
    operation.refresh_from_db()
    return operation


def _next_id(model) -> int:
    """The id the next row of ``model`` gets (one sequence value is spent to read it)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [model._meta.db_table])
        return cursor.fetchone()[0] + 1


def _next_pool_name(reef) -> str:
    taken, n = set(Pool.objects.filter(reef=reef).values_list("name", flat=True)), 1
    while f"storage-{n}" in taken:
        n += 1
    return f"storage-{n}"


def test_a_storage_top_up_on_aws_makes_a_whole_gateway(
    aws_reef, gateway_api, appliance, sync_tasks, django_capture_on_commit_callbacks
):
    stub, kms_key, reef = gateway_api, aws_reef["kms_key"], aws_reef["reef"]
    new_pool = Pool(pk=_next_id(Pool), name=_next_pool_name(reef), reef=reef)
    first_share = _next_id(Share)
    made = [Share(pk=first_share + slot, slot=slot, name=share_name(pool=new_pool, slot=slot)) for slot in range(10)]
    # pool step: find no gateway, activate the appliance, give it its cache, read its address
    _activation(stub, new_pool)
    stub.add_response("describe_cache", {"GatewayARN": NEW_GATEWAY, "DiskIds": []}, {"GatewayARN": NEW_GATEWAY})
    stub.add_response("list_local_disks", {"GatewayARN": NEW_GATEWAY, "Disks": [
        {"DiskAllocationType": "AVAILABLE", "DiskId": "pci-0000:03:00.0-scsi-0:0:1:0", "DiskNode": "SCSI(0:1)",
         "DiskPath": "/dev/sdb", "DiskSizeInBytes": 161061273600, "DiskStatus": "present"},
    ]}, {"GatewayARN": NEW_GATEWAY})
    stub.add_response("add_cache", {"GatewayARN": NEW_GATEWAY},
                      {"GatewayARN": NEW_GATEWAY, "DiskIds": ["pci-0000:03:00.0-scsi-0:0:1:0"]})
    stub.add_response("list_file_shares", {"FileShareInfoList": []}, {"GatewayARN": NEW_GATEWAY})
    stub.add_response("describe_gateway_information", {
        "GatewayARN": NEW_GATEWAY, "GatewayState": "RUNNING",
        "GatewayNetworkInterfaces": [{"Ipv4Address": APPLIANCE_ADDRESS}]}, {"GatewayARN": NEW_GATEWAY})
    # shares step: ten buckets (moto) and ten file shares, the earlier ones listed as CREATING
    for index, share in enumerate(made):
        earlier = made[:index]
        stub.add_response("list_file_shares", {"FileShareInfoList": [
            {"FileShareType": "NFS", "FileShareARN": _share_arn(s)} for s in earlier]}, {"GatewayARN": NEW_GATEWAY})
        if earlier:
            stub.add_response("describe_nfs_file_shares", {"NFSFileShareInfoList": [
                {"FileShareARN": _share_arn(s), "GatewayARN": NEW_GATEWAY, "FileShareStatus": "CREATING",
                 "LocationARN": f"arn:aws:s3:::acme-{s.name}"} for s in earlier
            ]}, {"FileShareARNList": [_share_arn(s) for s in earlier]})
        stub.add_response("create_nfs_file_share", {"FileShareARN": _share_arn(share)},
                          _nfs_params(share, kms_key))
        if index == 0:
            stub.add_response("describe_gateway_information", {
                "GatewayARN": NEW_GATEWAY, "GatewayNetworkInterfaces": [{"Ipv4Address": APPLIANCE_ADDRESS}]},
                {"GatewayARN": NEW_GATEWAY})

    operation = _run_top_up(aws_reef["reef"], django_capture_on_commit_callbacks)

    assert operation.state == OperationState.SUCCEEDED, operation.error
    stub.assert_no_pending_responses()
    pool = Pool.objects.get(pk=operation.pool_id)
    assert pool.pk == new_pool.pk and pool.status == PoolStatus.AVAILABLE and pool.external_id == NEW_GATEWAY
    ec2 = boto3.client("ec2", region_name=REGION)
    # the appliance: the AMI from SSM, in the subnet, IMDSv2, an encrypted cache disk, tagged with the pool
    (reservation,) = ec2.describe_instances(Filters=[{"Name": "tag:cellhub-pool", "Values": [str(pool.pk)]}])[
        "Reservations"]
    (instance,) = reservation["Instances"]
    assert instance["ImageId"] == aws_reef["image"] and instance["SubnetId"] == aws_reef["subnet"]
    assert instance["PrivateIpAddress"] == APPLIANCE_ADDRESS and instance["InstanceType"] == "m5.xlarge"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert pool.config["gateway_instance_id"] == instance["InstanceId"]
    # the activation key was read from the appliance itself
    assert appliance["requests"] == [f"/?activationRegion={REGION}&no_redirect="]
    # its security group: port 80 from the hub's range only, no NFS client yet
    (group,) = ec2.describe_security_groups(GroupIds=[pool.config["security_group_id"]])["SecurityGroups"]
    assert group["VpcId"] == aws_reef["vpc"] and group["GroupName"] == resource_name("p", pool.pk)
    assert [(p["IpProtocol"], p["FromPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in group["IpPermissions"]] \
        == [("tcp", 80, ["10.0.0.0/16"])]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group["GroupId"]]
    # a DNS record for the gateway
    dns = drivers.for_dns(pool.reef.region)
    assert dns.lookup(name=resource_name("p", pool.pk)) == APPLIANCE_ADDRESS
    assert pool.config["gateway_dns_name"] == dns.fqdn(resource_name("p", pool.pk))
    # ten buckets with their policies, ten endpoints available, the template's host untouched
    shares = list(pool.shares.order_by("slot"))
    assert [s.pk for s in shares] == [s.pk for s in made]
    s3 = boto3.client("s3", region_name=REGION)
    for share in shares:
        bucket = f"acme-{share.name}"
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        assert {s["Sid"] for s in policy["Statement"]} == {"DenyInsecureTransport", "DenyAllButTheGatewayRoleAndTheHub",
                                                          "GatewayRole"}
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        assert share.status == ShareStatus.AVAILABLE and share.endpoint == f"nfs://{APPLIANCE_ADDRESS}/{bucket}"
    assert pool.config["gateway_arn"] == NEW_GATEWAY != aws_reef["template"].config["gateway_arn"]


def test_a_gateway_top_up_that_fails_at_activation_leaves_nothing_behind(
    aws_reef, gateway_api, appliance, sync_tasks, django_capture_on_commit_callbacks
):
    stub = gateway_api
    new_pool = Pool(pk=_next_id(Pool))
    _activation_failing(stub, new_pool)

    operation = _run_top_up(aws_reef["reef"], django_capture_on_commit_callbacks)

    assert operation.state == OperationState.FAILED and "ActivationKeyExpired" in operation.error
    stub.assert_no_pending_responses()
    pool = Pool.objects.get(pk=new_pool.pk)

    assert pool.status == PoolStatus.FAILED
    ec2 = boto3.client("ec2", region_name=REGION)
    states = [i["State"]["Name"] for r in ec2.describe_instances(
        Filters=[{"Name": "tag:cellhub-pool", "Values": [str(pool.pk)]}])["Reservations"] for i in r["Instances"]]
    assert states == ["terminated"]
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [resource_name("p", pool.pk)]}])
    assert groups["SecurityGroups"] == []
    assert drivers.for_dns(pool.reef.region).lookup(name=resource_name("p", pool.pk)) is None
    assert not pool.shares.exists()


def test_the_gateway_image_is_awss_public_ssm_parameter_by_default():
    assert AMI_PARAMETER == "/aws/service/storagegateway/ami/FILE_S3/latest"
