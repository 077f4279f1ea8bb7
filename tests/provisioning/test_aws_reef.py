"""The provision plan on an AWS reef (RDS + Storage Gateway + EKS + Route 53), driven as a signup drives it, at each
SDK's wire (see ``tests/provisioning/aws_reef.py``): the request shapes, and a failure at each step — ours
(failpoints) or the cloud's (an error answered at the wire) — leaves nothing behind and a retry succeeds."""
from __future__ import annotations

import boto3
import psycopg
import pytest

from cells.choices import InstanceState, OperationState, ShareStatus
from cells.models import Instance, Operation, Share
from provisioning import drivers, faults
from provisioning.drivers.aws_rds import RdsDatabaseDriver
from provisioning.drivers.aws_storage_gateway import NO_CLIENT
from provisioning.lifecycle import instance_retry_provision
from tests.provisioning import aws_reef as reef_fixtures
from tests.provisioning.aws_reef import (
    GATEWAY,
    GATEWAY_ADDRESS,
    INGRESS,
    REGION,
    GatewayWire,
    expect_provision,
    rds_instances,
    route53_records,
    sign_up,
)
from tests.provisioning.drivers.test_kubernetes import FakeKubeApi

pytestmark = pytest.mark.django_db
# The AWS reef's fixtures (tests/provisioning/aws_reef.py), used by name.
aws_reef, aws_wire, eks, run = reef_fixtures.aws_reef, reef_fixtures.aws_wire, reef_fixtures.eks, reef_fixtures.run
STEPS = ("database", "share", "compute", "firewall", "dns")


def _databases_like(pattern: str) -> list[str]:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
        return [row[0] for row in connection.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [pattern])]


def _roles_like(pattern: str) -> list[str]:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
        return [row[0] for row in connection.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [pattern])]


def assert_provisioned(instance: Instance, reef, eks, aws_wire, settings) -> Share:
    """Everything a running instance holds, as each cloud sees it."""
    database = drivers.for_pool(reef["database"])
    name, login = database.database_name(instance), database.login_name(instance)
    assert _databases_like(name) == [name] and _roles_like(login) == [login]
    share = Share.objects.get(instance=instance)
    bucket = f"acme-{share.name}"
    assert share.status == ShareStatus.ASSIGNED and share.endpoint == f"nfs://{GATEWAY_ADDRESS}/{bucket}"
    assert share.firewall_address == FakeKubeApi.node  # the instance's own node, not the cluster's egress
    assert reef["gateway"].clients[share.pk] == FakeKubeApi.node
    namespace = drivers.for_pool(reef["compute"]).namespace(instance)
    deployment = eks.deployment(namespace)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(f":{instance.server_version}")
    assert {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": f"{instance.name}-database",
                                                                   "key": "DATABASE_URL"}}} in container["env"]
    assert deployment["spec"]["template"]["spec"]["volumes"] == [
        {"name": "share", "nfs": {"server": GATEWAY_ADDRESS, "path": f"/{bucket}"}}]
    secret = eks.objects[("secrets", namespace, f"{instance.name}-database")]
    assert secret["stringData"]["DATABASE_URL"] == (
        f"postgresql://{login}:{database.password(instance)}@127.0.0.1:5432/{name}?sslmode=disable")
    fqdn = f"{instance.name}.{settings.CELLHUB['HUB_DOMAIN']}."
    assert route53_records(settings) == {fqdn: INGRESS}
    return share


def assert_nothing_left(instance: Instance, reef, eks, settings, *, reef_released: bool = True) -> None:
    """No database, login, namespace, DNS record; the share back in the pool, scrubbed and closed."""
    database = drivers.for_pool(reef["database"])
    assert _databases_like(database.database_name(instance)) == []
    assert _roles_like(database.login_name(instance)) == []
    assert eks.namespaces() == []
    assert route53_records(settings) == {}
    assert rds_instances() == [database.identifier]
    for share in reef["storage"].shares.all():
        assert (share.status, share.instance_id, share.firewall_address) == (ShareStatus.AVAILABLE, None, "")
        assert reef["gateway"].clients[share.pk] == NO_CLIENT
        assert boto3.client("s3", region_name=REGION).list_object_versions(
            Bucket=f"acme-{share.name}").get("Versions", []) == []
    instance.refresh_from_db()
    assert (instance.database_pool_id, instance.compute_pool_id) == (None, None)
    assert (instance.reef_id is None) is reef_released


def test_a_signup_on_an_aws_reef_runs_with_its_database_share_deployment_and_record(
    aws_reef, aws_wire, eks, run, settings
):
    share = expect_provision(aws_reef)
    operation = sign_up(run, aws_reef)

    assert operation.state == OperationState.SUCCEEDED, operation.error
    aws_wire.stub.assert_no_pending_responses()
    instance = Instance.objects.get(pk=operation.instance_id)
    assert instance.state == InstanceState.RUNNING
    assert assert_provisioned(instance, aws_reef, eks, aws_wire, settings).pk == share.pk
    # The file share was CREATING at the firewall step: the update waited for AVAILABLE (one retry of the step).
    (update,) = aws_wire.named("UpdateNFSFileShare")
    assert update == {"FileShareARN": aws_reef["gateway"].arn(share), "ClientList": [FakeKubeApi.node]}
    # Route 53: one UPSERT of an A record at the reef's ingress.
    (change,) = aws_wire.named("ChangeResourceRecordSets")
    assert change["ChangeBatch"]["Changes"] == [{"Action": "UPSERT", "ResourceRecordSet": {
        "Name": f"acme.{settings.CELLHUB['HUB_DOMAIN']}.", "Type": "A", "TTL": 300,
        "ResourceRecords": [{"Value": INGRESS}]}}]
    # The bucket was re-applied as the driver wants it (versioned, SSE-KMS with the pool's key, policy).
    (encryption,) = [p for p in aws_wire.named("PutBucketEncryption") if p["Bucket"] == f"acme-{share.name}"]
    rule = encryption["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    assert rule == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": aws_reef["kms_key"]}
    # EKS: namespace, secret, deployment, service, ingress created once each; the pods listed for the node address.
    posted = [r["path"].rsplit("/", 1)[-1] for r in eks.requests if r["method"] == "POST"]
    assert posted == ["namespaces", "secrets", "deployments", "services", "ingresses"]
    ingress = eks.objects[("ingresses", drivers.for_pool(aws_reef["compute"]).namespace(instance), "acme")]
    assert ingress["spec"]["rules"][0]["host"] == f"acme.{settings.CELLHUB['HUB_DOMAIN']}"


def _arm_at_the_wire(where: str, aws_reef, aws_wire, eks, share):
    """A cloud-side failure at ``where``; queues the gateway calls made before it. Returns what the error names."""
    gateway = aws_reef["gateway"]
    if where == "database":  # the pool's RDS instance was deleted behind the hub's back
        rds, identifier = boto3.client("rds", region_name=REGION), drivers.for_pool(aws_reef["database"]).identifier
        rds.modify_db_instance(DBInstanceIdentifier=identifier, DeletionProtection=False, ApplyImmediately=True)
        rds.delete_db_instance(DBInstanceIdentifier=identifier, SkipFinalSnapshot=True)
        return "does not exist"
    if where == "share":  # Storage Gateway refuses to list (the gateway role lost access)
        aws_wire.stub.add_client_error(
            "list_file_shares", service_error_code="InvalidGatewayRequestException", http_status_code=400,
            service_message="User is not authorized to perform this operation.",
            modeled_fields={"error": {"errorCode": "NotAuthorized"}}, expected_params={"GatewayARN": GATEWAY})
        return "NotAuthorized"
    gateway.share_created()
    if where == "compute":  # an admission webhook refuses the deployment
        eks.fail("POST", "deployments", 422)
        return "422"
    if where == "firewall":  # the file share refuses the client list
        gateway.listed()
        aws_wire.stub.add_client_error(
            "update_nfs_file_share", service_error_code="InvalidGatewayRequestException", http_status_code=400,
            service_message="The specified client list is not valid.",
            modeled_fields={"error": {"errorCode": "InvalidParameters"}},
            expected_params={"FileShareARN": gateway.arn(share), "ClientList": [FakeKubeApi.node]})
        return "InvalidParameters"
    gateway.firewalled(share, FakeKubeApi.node, creating=False)
    # dns: the hosted zone is gone
    route53 = boto3.client("route53")
    route53.delete_hosted_zone(Id=route53.list_hosted_zones()["HostedZones"][0]["Id"])
    return "no hosted zone"


@pytest.mark.parametrize("cause", ["failpoint", "wire"])
@pytest.mark.parametrize("step", STEPS)
def test_a_provision_failing_at_any_step_leaves_nothing_behind_and_a_retry_succeeds(
    step, cause, aws_reef, aws_wire, eks, run, settings
):
    share = Share.objects.filter(pool=aws_reef["storage"]).order_by("slot").first()
    gateway = aws_reef["gateway"]
    if cause == "failpoint":
        faults.arm(f"provision.{step}.after", "permanent")
        if STEPS.index(step) >= STEPS.index("share"):
            gateway.share_created()
        if STEPS.index(step) >= STEPS.index("firewall"):
            gateway.firewalled(share, FakeKubeApi.node, creating=False)
        named = f"injected permanent fault at provision.{step}.after"
    else:
        named = _arm_at_the_wire(step, aws_reef, aws_wire, eks, share)
    gateway.released(share)
    zone_gone = cause == "wire" and step == "dns"

    operation = sign_up(run, aws_reef)

    assert operation.state == OperationState.FAILED and named in operation.error, operation.error
    aws_wire.stub.assert_no_pending_responses()
    instance = Instance.objects.get(pk=operation.instance_id)
    assert instance.state == InstanceState.FAILED
    if cause == "wire" and step == "database":  # the pool's instance is really gone: the retry finds a new one
        RdsDatabaseDriver(aws_reef["database"]).provision_pool()
    if zone_gone:
        # The record could not be removed either: the instance keeps its reef (named, for the retry to finish);
        # everything else went back.
        assert "cleanup incomplete (a retry finishes it): dns record" in operation.error
        boto3.client("route53").create_hosted_zone(Name=settings.CELLHUB["HUB_DOMAIN"], CallerReference="again")
        assert_nothing_left(instance, aws_reef, eks, settings, reef_released=False)
    else:
        assert "everything taken was released" in operation.error
        assert_nothing_left(instance, aws_reef, eks, settings)

    expect_provision(aws_reef)
    retried = run(instance_retry_provision, instance=instance)

    retried.refresh_from_db()
    assert retried.pk == operation.pk and retried.state == OperationState.SUCCEEDED, retried.error
    aws_wire.stub.assert_no_pending_responses()
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    assert_provisioned(instance, aws_reef, eks, aws_wire, settings)
    assert Operation.objects.filter(instance=instance).count() == 1


# ---- gateway replacement: a failed gateway's buckets served by a new one, the deployments re-pointed -----------

NEW_GATEWAY = f"arn:aws:storagegateway:{REGION}:111122223333:gateway/sgw-99Z9999Z"
NEW_ADDRESS = "10.35.70.12"


def _expect_replace(aws_reef, new, *, steps=("host", "shares"), existing=(), moved=False):
    """Queue the new gateway's calls of the replace steps: ``existing`` shares already have their file share on it;
    ``moved``: every share row moved already (the step re-associates nothing more)."""
    if "host" in steps:
        new.stub.add_response("describe_gateway_information", {"GatewayARN": NEW_GATEWAY}, {"GatewayARN": NEW_GATEWAY})
        new.cache()
        new.stub.add_response("list_file_shares", {"FileShareInfoList": []}, {"GatewayARN": NEW_GATEWAY})
    if "shares" in steps:
        new.cache()
        if existing:
            GatewayWire(new.stub, list(existing), gateway=NEW_GATEWAY, address=NEW_ADDRESS).listed()
        else:
            new.stub.add_response("list_file_shares", {"FileShareInfoList": []}, {"GatewayARN": NEW_GATEWAY})
        for index, share in enumerate(() if moved else aws_reef["shares"]):
            if share not in existing:
                new.created(share, Share.objects.get(pk=share.pk).firewall_address or NO_CLIENT, aws_reef["kms_key"])
            if index == 0:
                new.address()


@pytest.mark.parametrize("failure", [None, "host", "shares", "instances", "wire"])
def test_a_failed_gateway_is_replaced_its_buckets_kept_and_the_eks_deployment_mounts_the_new_one(
    failure, aws_reef, aws_wire, eks, run, settings
):
    """The replace runs through ``pool_replace`` as staff start it; a failure at each step (or Storage Gateway
    refusing the second file share) deletes nothing, and the same request retries it to the end."""
    from provisioning.capacity import pool_mark_failed, pool_replace

    expect_provision(aws_reef)
    instance = Instance.objects.get(pk=sign_up(run, aws_reef).instance_id)
    bucket = f"acme-{Share.objects.get(instance=instance).name}"
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=bucket, Key="config/server.json", Body=b'{"theme": "dark"}')
    pool_mark_failed(pool=aws_reef["storage"], reason="gateway appliance terminated")
    new = GatewayWire(aws_wire.stub, aws_reef["shares"], gateway=NEW_GATEWAY, address=NEW_ADDRESS)
    shares = aws_reef["shares"]
    if failure == "wire":
        _expect_replace(aws_reef, new, steps=("host",))
        new.cache()
        aws_wire.stub.add_response("list_file_shares", {"FileShareInfoList": []}, {"GatewayARN": NEW_GATEWAY})
        new.created(shares[0], FakeKubeApi.node, aws_reef["kms_key"])
        new.address()
        aws_wire.stub.add_client_error(
            "create_nfs_file_share", service_error_code="InvalidGatewayRequestException", http_status_code=400,
            service_message="The gateway has reached its file share limit.",
            modeled_fields={"error": {"errorCode": "InvalidParameters"}})
    elif failure is not None:
        faults.arm(f"replace.{failure}.after", "permanent")
        _expect_replace(aws_reef, new, steps=("host", "shares") if failure != "host" else ("host",))
    else:
        _expect_replace(aws_reef, new)

    operation = run(pool_replace, pool=aws_reef["storage"], config={"gateway_arn": NEW_GATEWAY})
    operation.refresh_from_db()

    if failure is not None:
        assert operation.state == OperationState.FAILED and "nothing deleted" in operation.error, operation.error
        aws_wire.stub.assert_no_pending_responses()
        assert s3.get_object(Bucket=bucket, Key="config/server.json")["Body"].read() == b'{"theme": "dark"}'
        assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith("acme-region")) == \
            sorted(f"acme-{share.name}" for share in shares)
        retry_steps = {"host": ("host", "shares"), "shares": ("shares",), "instances": (), "wire": ("shares",)}
        existing = shares if failure == "shares" else (shares[:1] if failure == "wire" else ())
        moved = Share.objects.filter(pool=aws_reef["storage"]).count() == 0
        assert moved is (failure in ("shares", "instances"))  # shares move only once every file share exists
        _expect_replace(aws_reef, new, steps=retry_steps[failure], existing=existing, moved=moved)
        operation = run(pool_replace, pool=aws_reef["storage"])
        operation.refresh_from_db()

    assert operation.state == OperationState.SUCCEEDED, operation.error
    aws_wire.stub.assert_no_pending_responses()
    for share in Share.objects.filter(pk__in=[s.pk for s in shares]):
        assert share.endpoint == f"nfs://{NEW_ADDRESS}/acme-{share.name}" and share.pool_id != aws_reef["storage"].pk
    assert s3.get_object(Bucket=bucket, Key="config/server.json")["Body"].read() == b'{"theme": "dark"}'
    namespace = drivers.for_pool(aws_reef["compute"]).namespace(instance)
    assert eks.deployment(namespace)["spec"]["template"]["spec"]["volumes"] == [
        {"name": "share", "nfs": {"server": NEW_ADDRESS, "path": f"/{bucket}"}}]
