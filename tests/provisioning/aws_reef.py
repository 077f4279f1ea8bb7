"""An AWS reef for the end-to-end tests of the plans (test_aws_reef*.py): RDS + Storage Gateway + EKS + Route 53,
each reached through its own SDK at the wire.

- moto (``mock_aws``) plays RDS, S3, KMS, STS and Route 53. moto's RDS instances answer with an endpoint no one can
  reach; here it is the local PostgreSQL server (127.0.0.1), so the SQL, pg_dump and pg_restore really run.
- botocore's ``Stubber`` plays Storage Gateway (moto has none): ``GatewayWire`` queues each call the driver must
  make, with its exact parameters, answered as in the SDK's own examples (file shares ``CREATING`` first, a cache
  still uploading).
- ``EksApi`` (FakeKubeApi on 127.0.0.1, reached through a kubeconfig) plays the EKS cluster: the kubernetes client
  talks HTTP to it; a deployment reports ready replicas once scheduled (none while its pod crashes), and any
  request kind can be told to answer an error.

Every boto3 request is recorded from botocore's ``before-parameter-build`` event (``Wire.calls``), so the shapes
of moto's calls are asserted as well. Nothing of ours is replaced.
"""
from __future__ import annotations

import json

import boto3
import moto.rds.models
import moto.s3.models
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from cells.choices import InstanceState, OperationState, PoolKind, Provider
from cells.models import Instance, Operation, Share
from provisioning import drivers
from provisioning.drivers.aws_rds import RdsDatabaseDriver
from provisioning.drivers.aws_storage_gateway import NO_CLIENT
from provisioning.drivers.base import resource_name
from provisioning.lifecycle import instance_signup
from tests.factories import make_pool, make_reef, make_region
from tests.provisioning.aws_offline import offline_aws
from tests.provisioning.drivers.test_kubernetes import COLLECTION, FakeKubeApi

REGION = "us-east-1"
# The gateway of the SDK examples (DescribeGatewayInformation, ListFileShares).
GATEWAY = f"arn:aws:storagegateway:{REGION}:111122223333:gateway/sgw-12A3456B"
GATEWAY_ADDRESS = "10.35.69.216"  # DescribeGatewayInformation's example interface
ROLE = "arn:aws:iam::111122223333:role/cellhub-gateway"
DB_BACKUPS = "acme-db-backups"
ARCHIVE = "acme-archive"
INGRESS = "52.94.236.248"
# DescribeCache's example answer (its cache fully uploaded).
DESCRIBE_CACHE = {"CacheAllocatedInBytes": 2199023255552, "CacheDirtyPercentage": 0.0, "CacheHitPercentage": 99.68,
                  "CacheMissPercentage": 0.32, "CacheUsedPercentage": 0.07,
                  "DiskIds": ["pci-0000:03:00.0-scsi-0:0:0:0", "pci-0000:04:00.0-scsi-0:1:0:0"]}


class EksApi(FakeKubeApi):
    """FakeKubeApi whose deployments report their replicas (ready once the scheduler placed a pod whose image does
    not crash) and which answers ``errors[(method, resource)] = [status, times]`` instead of doing the request."""

    REASONS = {403: "Forbidden", 422: "Invalid", 500: "InternalError"}

    def __init__(self):
        super().__init__()
        self.errors: dict[tuple[str, str], list[int]] = {}
        self.crashing: set[str] = set()  # images whose pods never become ready

    def fail(self, method: str, resource: str, status: int = 422, times: int = 1) -> None:
        self.errors[(method, resource)] = [status, times]

    def answer(self, method, path, query, body):
        match = COLLECTION.match(path)
        if match:
            planned = self.errors.get((method, match["resource"]))
            if planned and planned[1] > 0:
                planned[1] -= 1
                return planned[0], self._status(planned[0], self.REASONS.get(planned[0], "Error")), None
        return super().answer(method, path, query, body)

    def schedule(self, method, path, status, answer):
        super().schedule(method, path, status, answer)
        if status not in (200, 201) or "/deployments" not in path or method not in ("POST", "PATCH"):
            return  # only a change of a deployment changes its pods
        for (resource, _, _), obj in self.objects.items():
            if resource == "deployments":
                replicas = obj["spec"].get("replicas", 1)
                image = obj["spec"]["template"]["spec"]["containers"][0]["image"]
                obj["status"] = {"replicas": replicas, "readyReplicas": 0 if image in self.crashing else replicas}

    def crash(self, namespace: str) -> None:
        """The instance's pod stops being ready (its process died); the deployment says so."""
        for (resource, ns, _), obj in self.objects.items():
            if resource == "deployments" and ns == namespace:
                obj["status"] = {**obj.get("status", {}), "readyReplicas": 0}

    def deployment(self, namespace: str) -> dict | None:
        return next((obj for (resource, ns, _), obj in self.objects.items()
                     if resource == "deployments" and ns == namespace), None)

    def namespaces(self) -> list[str]:
        return sorted(name for resource, _, name in self.objects if resource == "namespaces")


class GatewayWire:
    """The Storage Gateway API of one gateway serving the pool's shares, as a Stubber queue of exact calls."""

    def __init__(self, stub: Stubber, shares: list[Share], *, gateway: str = GATEWAY, address: str = GATEWAY_ADDRESS):
        self.stub, self.shares, self.gateway, self.ip = stub, shares, gateway, address
        self.clients = {share.pk: NO_CLIENT for share in shares}

    def arn(self, share: Share) -> str:
        return f"{self.gateway}/share/share-{share.pk:08X}"

    def listed(self, *, status: str = "AVAILABLE", of: Share | None = None) -> None:
        """ListFileShares + DescribeNFSFileShares of the gateway; ``of`` (else every share) answers ``status``."""
        arns = [self.arn(share) for share in self.shares]
        self.stub.add_response("list_file_shares", {"FileShareInfoList": [
            {"FileShareType": "NFS", "FileShareARN": self.arn(share), "FileShareId": f"share-{share.pk:08X}",
             "FileShareStatus": "AVAILABLE", "GatewayARN": self.gateway} for share in self.shares]},
            {"GatewayARN": self.gateway})
        self.stub.add_response("describe_nfs_file_shares", {"NFSFileShareInfoList": [
            {"FileShareARN": self.arn(share), "FileShareId": f"share-{share.pk:08X}", "GatewayARN": self.gateway,
             "FileShareStatus": status if of is None or of.pk == share.pk else "AVAILABLE",
             "LocationARN": f"arn:aws:s3:::acme-{share.name}", "Path": f"/acme-{share.name}", "Role": ROLE,
             "ClientList": [self.clients[share.pk]], "Squash": "RootSquash", "ReadOnly": False,
             "KMSEncrypted": True} for share in self.shares]},
            {"FileShareARNList": arns})

    def address(self) -> None:
        self.stub.add_response("describe_gateway_information", {
            "GatewayARN": self.gateway, "GatewayId": self.gateway.rsplit("/", 1)[-1], "GatewayName": "cellhub",
            "GatewayState": "RUNNING", "GatewayType": "FILE_S3", "GatewayTimezone": "GMT",
            "GatewayNetworkInterfaces": [{"Ipv4Address": self.ip, "MacAddress": "0a:4d:33:6a:e5:b5"}],
        }, {"GatewayARN": self.gateway})

    def client_list(self, share: Share, address: str) -> None:
        self.stub.add_response("update_nfs_file_share", {"FileShareARN": self.arn(share)},
                               {"FileShareARN": self.arn(share), "ClientList": [address]})
        self.clients[share.pk] = address

    def refresh(self, share: Share) -> None:
        self.stub.add_response("refresh_cache", {"FileShareARN": self.arn(share), "NotificationId": "n-1"},
                               {"FileShareARN": self.arn(share), "FolderList": ["/"], "Recursive": True})

    def cache(self, *, dirty: float = 0.0) -> None:
        self.stub.add_response("describe_cache", {**DESCRIBE_CACHE, "GatewayARN": self.gateway,
                                                  "CacheDirtyPercentage": dirty}, {"GatewayARN": self.gateway})

    def created(self, share: Share, client: str, kms_key: str) -> None:
        """CreateNFSFileShare of ``share``'s bucket on this gateway, with exactly the parameters the driver owes."""
        bucket = f"acme-{share.name}"
        self.stub.add_response("create_nfs_file_share", {"FileShareARN": self.arn(share)}, {
            "ClientToken": f"{resource_name('s', share.pk)}-{self.gateway.rsplit('/', 1)[-1]}",
            "NFSFileShareDefaults": {"FileMode": "0664", "DirectoryMode": "0775", "GroupId": 65534, "OwnerId": 65534},
            "GatewayARN": self.gateway, "EncryptionType": "SseKms", "KMSEncrypted": True, "KMSKey": kms_key,
            "Role": ROLE, "LocationARN": f"arn:aws:s3:::{bucket}", "DefaultStorageClass": "S3_STANDARD",
            "ObjectACL": "bucket-owner-full-control", "ClientList": [client], "Squash": "RootSquash",
            "ReadOnly": False, "FileShareName": bucket,
            "Tags": [{"Key": "cellhub-share", "Value": str(share.pk)},
                     {"Key": "cellhub-status", "Value": "available"}],
        })
        self.clients[share.pk] = client

    # -- what a plan step does on the gateway ---------------------------------------------------------------
    def share_created(self) -> None:
        """provision's share step: the file share a top-up made is found; the endpoint names the gateway."""
        self.listed()
        self.address()

    def firewalled(self, share: Share, address: str, *, creating: bool = True) -> None:
        """A share's client list set once its file share is AVAILABLE (``creating``: first answered CREATING)."""
        if creating:
            self.listed(status="CREATING", of=share)
        self.listed()
        self.client_list(share, address)

    def released(self, share: Share) -> None:
        """A share given back (a failed provision, a decommission's scrub): it exists, is scrubbed (S3, then the
        gateway's cache refreshed) and closed to every client."""
        self.listed()  # share_exists
        self.listed()  # scrub: find its file share
        self.refresh(share)
        self.listed()  # set_firewall
        self.client_list(share, NO_CLIENT)


def _conditions_hold(conditions: dict, caller_arn: str) -> bool:
    """Whether a bucket policy statement's conditions hold for the hub's own request (HTTPS, as ``caller_arn``)."""
    for operator, tests in conditions.items():
        for key, values in tests.items():
            values = values if isinstance(values, list) else [values]
            if (operator, key) == ("Bool", "aws:SecureTransport"):
                holds = "true" in [str(value).lower() for value in values]
            elif (operator, key) == ("ArnNotEquals", "aws:PrincipalArn"):
                holds = caller_arn not in values
            elif (operator, key) == ("ArnEquals", "aws:PrincipalArn"):
                holds = caller_arn in values
            else:
                raise AssertionError(f"the test's policy evaluation does not know {operator} {key}")
            if not holds:
                return False
    return True


def evaluate_bucket_policies_as_the_hub(monkeypatch) -> None:
    """moto enforces a bucket policy on object requests but ignores its conditions, so the driver's policy (deny
    everyone but the gateway role and the hub; deny plain HTTP) would deny the hub too. Here moto evaluates the
    statements whose conditions hold for the hub's requests (HTTPS, as moto's STS identity): a policy that left the
    hub out would still deny it."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    caller = boto3.client("sts", region_name=REGION).get_caller_identity()["Arn"]

    def get_permission(bucket, action: str, resource: str):
        if bucket.policy is None:
            return PermissionResult.NEUTRAL
        policy = json.loads(bucket.policy)
        statements = [s for s in policy["Statement"] if _conditions_hold(s.get("Condition", {}), caller)]
        return IAMPolicy(json.dumps({**policy, "Statement": statements})).is_action_permitted(action, resource)

    monkeypatch.setattr(moto.s3.models.FakeBucket, "get_permission", get_permission)


class Wire:
    """Everything the hub sent to AWS: ``calls`` (service, operation, params) and the Storage Gateway stub."""

    def __init__(self, calls: list, stub: Stubber):
        self.calls, self.stub = calls, stub

    def named(self, operation: str, service: str | None = None) -> list[dict]:
        return [params for svc, name, params in self.calls
                if name == operation and (service is None or svc == service)]


@pytest.fixture
def aws_wire(monkeypatch, tmp_path, settings):
    offline_aws(monkeypatch, tmp_path, REGION, CELLHUB_POOL_SECRET_TEST_RDS="unused-with-trust-auth")
    monkeypatch.delenv("CELLHUB_ROUTE53_ZONE_ID", raising=False)
    settings.CELLHUB = {**settings.CELLHUB, "CLOUD_BACKOFF": 0, "DNS_PROVIDER": "", "UPGRADE_HEALTH_WAIT_SECONDS": 0.3,
                        "HEALTH_HTTP": False}
    with mock_aws():
        monkeypatch.setattr(moto.rds.models.DBInstance, "address", property(lambda self: "127.0.0.1"))
        boto3.setup_default_session()
        calls: list = []

        def record(params, model, **kwargs):
            calls.append((model.service_model.service_name, model.name, dict(params)))

        boto3.DEFAULT_SESSION.events.register("before-parameter-build", record)
        real_client = boto3.client
        storagegateway = real_client("storagegateway", region_name=REGION)
        monkeypatch.setattr(boto3, "client", lambda service, *args, **kwargs: storagegateway
                            if service == "storagegateway" else real_client(service, *args, **kwargs))
        evaluate_bucket_policies_as_the_hub(monkeypatch)
        with Stubber(storagegateway) as stub:
            yield Wire(calls, stub)
        boto3.DEFAULT_SESSION = None


@pytest.fixture
def eks(tmp_path):
    api = EksApi().start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: eks\n"
        f"clusters: [{{name: eks, cluster: {{server: '{api.host}'}}}}]\n"
        "contexts: [{name: eks, context: {cluster: eks, user: hub}}]\nusers: [{name: hub, user: {token: t}}]\n"
    )
    api.kubeconfig = str(kubeconfig)
    yield api
    api.stop()


@pytest.fixture
def aws_reef(aws_wire, eks, settings):
    """An AWS reef with capacity: an RDS pool (moto, at the local PostgreSQL), a Storage Gateway pool of 3 shares
    whose buckets (moto) and file shares (the stub) a top-up made, an EKS compute pool, a Route 53 zone."""
    boto3.client("route53").create_hosted_zone(Name=settings.CELLHUB["HUB_DOMAIN"], CallerReference="hub")
    kms = boto3.client("kms", region_name=REGION)
    kms_key = kms.create_key(Description="pool key")["KeyMetadata"]["Arn"]
    s3 = boto3.client("s3", region_name=REGION)
    for bucket in (DB_BACKUPS, ARCHIVE):
        s3.create_bucket(Bucket=bucket)
    reef = make_reef(make_region(cloud="aws", location=REGION), ingress_address=INGRESS)
    database = make_pool(reef, PoolKind.DATABASE, capacity=3, provider=Provider.AWS_RDS, config={
        "master_password_env": "CELLHUB_POOL_SECRET_TEST_RDS", "master_username": "postgres", "sslmode": "disable",
        "backup_bucket": DB_BACKUPS, "kms_key_id": kms_key, "waiter_delay_seconds": 1, "waiter_max_attempts": 3,
    })
    result = RdsDatabaseDriver(database).provision_pool()
    database.config = {**database.config, **result["config"]}
    database.external_id = result["external_id"]
    database.save()
    storage = make_pool(reef, PoolKind.STORAGE, capacity=3, provider=Provider.AWS_STORAGE_GATEWAY, config={
        "gateway_arn": GATEWAY, "role_arn": ROLE, "kms_key_arn": kms_key, "bucket_prefix": "acme-",
        "archive_bucket": ARCHIVE,
    })
    storage_driver = drivers.for_pool(storage)
    shares = list(storage.shares.order_by("slot"))
    for share in shares:
        storage_driver.ensure_bucket(storage_driver.bucket_name(share))
    compute = make_pool(reef, PoolKind.COMPUTE, capacity=3, provider=Provider.KUBERNETES,
                        config={"kubeconfig": eks.kubeconfig, "egress_address": "3.4.5.6"})
    aws_wire.calls.clear()
    return {"reef": reef, "database": database, "storage": storage, "compute": compute, "kms_key": kms_key,
            "shares": shares, "gateway": GatewayWire(aws_wire.stub, shares)}


@pytest.fixture
def run(django_capture_on_commit_callbacks, sync_tasks):
    """Call a service and run what its commit enqueues (the operation), inline, as the worker would."""

    def call(function, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return function(*args, **kwargs)

    return call


def sign_up(run, reef, name="acme") -> Operation:
    """A new customer signs up for ``name`` on the reef's region; its provision runs. Returns the operation."""
    operation = run(instance_signup, name=name, region=reef["reef"].region,
                    new_owner={"email": f"{name}@example.com", "password": "a-long-enough-passphrase"})
    operation.refresh_from_db()
    return operation


def expect_provision(reef, node: str = FakeKubeApi.node) -> Share:
    """Queue the gateway calls of a provision that takes the first available share; returns that share."""
    share = Share.objects.filter(pool=reef["storage"], instance__isnull=True).order_by("slot").first()
    gateway = reef["gateway"]
    gateway.share_created()
    gateway.firewalled(share, node)
    return share


def running(run, reef, name="acme") -> Instance:
    """A signup provisioned to running (its gateway calls queued here)."""
    expect_provision(reef)
    operation = sign_up(run, reef, name)
    assert operation.state == OperationState.SUCCEEDED, operation.error
    instance = Instance.objects.get(pk=operation.instance_id)
    assert instance.state == InstanceState.RUNNING
    return instance


def rds_instances() -> list[str]:
    return sorted(i["DBInstanceIdentifier"] for i in boto3.client("rds", region_name=REGION)
                  .describe_db_instances()["DBInstances"])


def route53_records(settings) -> dict[str, str]:
    """name → value of the A/AAAA/CNAME records in the hub's zone, listed through the SDK."""
    route53 = boto3.client("route53")
    zone = route53.list_hosted_zones()["HostedZones"][0]["Id"]
    return {rs["Name"]: rs["ResourceRecords"][0]["Value"]
            for rs in route53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
            if rs["Type"] in ("A", "AAAA", "CNAME")}


def bucket_objects(bucket: str) -> dict[str, bytes]:
    s3 = boto3.client("s3", region_name=REGION)
    return {item["Key"]: s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
