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
from tests.provisioning.aws_reef import (  # noqa: F401  (fixtures)
    GATEWAY,
    GATEWAY_ADDRESS,
    INGRESS,
    REGION,
    aws_reef,
    aws_wire,
    eks,
    expect_provision,
    rds_instances,
    route53_records,
    run,
    sign_up,
)
from tests.provisioning.drivers.test_kubernetes import FakeKubeApi

pytestmark = pytest.mark.django_db
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
