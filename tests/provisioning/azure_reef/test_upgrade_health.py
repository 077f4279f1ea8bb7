"""Upgrade and health on an Azure reef. An upgrade backs the Azure SQL database up (a restore point), patches the AKS
deployment's image through the kubernetes API and waits until the new pods are ready before it records the version;
a failure at each step rolls the instance back (image, version, state; the database too once the new image ran) and a
retry upgrades it. The health pass reads each deployment through the kubernetes API, restarts an unhealthy one (scale
to 0, deploy again) and moves the share's firewall to where the instance came back."""
from __future__ import annotations

import pytest

from cells.choices import InstanceState, OperationKind, OperationState, ReleaseState
from cells.models import Operation, Pool, Release
from provisioning import drivers, faults
from provisioning.health import health_check_pass
from provisioning.models import Backup, BackupReason, BackupState, HealthAction, HealthStatus, InstanceDatabase
from provisioning.operations import operation_retry
from provisioning.rollouts import instance_upgrade
from tests.provisioning.azure_reef.conftest import ACCOUNT, EGRESS, HUB, SERVER, SQL_API, ip_rules, namespace

pytestmark = pytest.mark.django_db

OLD, NEW = "ghcr.io/cellhub/server:2026.4.1", "ghcr.io/cellhub/server:2026.5.0"


@pytest.fixture
def release(db):
    return Release.objects.create(version="2026.5.0", image="ghcr.io/cellhub/server", state=ReleaseState.AVAILABLE)


@pytest.fixture
def running(signup, reef, kube, settings):
    settings.CELLHUB = {**settings.CELLHUB, "UPGRADE_HEALTH_WAIT_SECONDS": 5.0}
    # Azure's newest restorable moment lags now by its log backups' period (10 minutes by default): 2 s here.
    database = reef["database"]
    Pool.objects.filter(pk=database.pk).update(config={**database.config, "restore_lag_seconds": 2})
    kube.ready_after = 0
    instance = signup("acme")
    assert instance.state == InstanceState.RUNNING and instance.server_version == "2026.4.1"
    return instance


def _deployment(kube, instance) -> dict:
    return kube.objects[("deployments", namespace(instance), instance.name)]


def _image(kube, instance) -> str:
    return _deployment(kube, instance)["spec"]["template"]["spec"]["containers"][0]["image"]


def test_an_upgrade_backs_up_patches_the_image_and_waits_for_the_new_pods_before_recording_the_version(
    running, release, cloud, kube, run
):
    instance = running
    kube.ready_after = 3  # the new pods take three looks to become ready
    cloud.requests.clear()
    kube.requests.clear()

    operation = run(instance_upgrade, instance=instance, release=release)

    assert operation.state == OperationState.SUCCEEDED, operation.error
    instance.refresh_from_db()
    assert (instance.state, instance.server_version) == (InstanceState.RUNNING, "2026.5.0")
    assert _image(kube, instance) == NEW
    backup = Backup.objects.get(operation=operation, reason=BackupReason.PRE_UPGRADE)
    assert backup.state == BackupState.SUCCEEDED
    database = drivers.for_pool(instance.database_pool).database_name(instance)
    assert backup.location.startswith(f"{SERVER}/databases/{database}?restorePointInTime=")
    retention = cloud.calls("PUT", r"/backupShortTermRetentionPolicies/default$")[0]
    assert retention.path == f"{SERVER}/databases/{database}/backupShortTermRetentionPolicies/default"
    assert retention.query["api-version"] == [SQL_API]
    # The kubernetes API: the image patched (strategic merge), then the deployment read until its pods were ready.
    patches = [r for r in kube.requests if r["method"] == "PATCH"]
    assert [(p["path"], p["body"], p["content_type"]) for p in patches] == [(
        f"/apis/apps/v1/namespaces/{namespace(instance)}/deployments/acme",
        {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": NEW}]}}}},
        "application/strategic-merge-patch+json",
    )]
    after_patch = kube.requests[kube.requests.index(patches[0]) + 1:]
    reads = [r for r in after_patch if r["method"] == "GET" and r["path"].endswith("/deployments")]
    assert len(reads) == 4  # three not ready yet, then ready: the version is recorded only then
    assert reads[0]["query"]["labelSelector"] == ["app.kubernetes.io/managed-by=cellhub"]


def _break(case, cloud, kube, instance):
    kind, detail = case
    if kind == "failpoint":
        faults.arm(f"upgrade.{detail}.after", "permanent")
    elif kind == "database unreadable":
        cloud.fail("GET", r"/databases/[^/]+_i\d+$", status=500, times=1000)
    elif kind == "retention refused":
        cloud.fail("PUT", r"/backupShortTermRetentionPolicies/", status=400)
    elif kind == "patch forbidden":
        kube.refuse[("PATCH", "deployments")] = [403, 1]
    elif kind == "never ready":
        kube.crashing.add(namespace(instance))


UPGRADE_FAILURES = [
    *[("failpoint", step) for step in ("backup", "patch image", "wait for health", "record version")],
    ("database unreadable", "backup"), ("retention refused", "backup"), ("patch forbidden", "patch image"),
    ("never ready", "wait for health"),
]


@pytest.mark.parametrize("case", UPGRADE_FAILURES, ids=[f"{k}-{s}" for k, s in UPGRADE_FAILURES])
def test_an_upgrade_failing_at_each_step_rolls_back_and_a_retry_upgrades(case, running, release, cloud, kube, run,
                                                                        settings):
    instance = running
    settings.CELLHUB = {**settings.CELLHUB, "UPGRADE_HEALTH_WAIT_SECONDS": 0.2}
    database = drivers.for_pool(instance.database_pool).database_name(instance)
    _break(case, cloud, kube, instance)

    operation = run(instance_upgrade, instance=instance, release=release)

    assert operation.state == OperationState.FAILED
    assert f"rolled back: image back to {OLD}" in operation.error, operation.error
    instance.refresh_from_db()
    assert (instance.state, instance.server_version) == (InstanceState.RUNNING, "2026.4.1")
    assert _image(kube, instance) == OLD
    # Once the patch was asked for, the new image may have run (a refused call included: the hub cannot tell).
    new_image_may_have_run = case[1] in ("patch image", "wait for health", "record version")
    restores = Operation.objects.filter(instance=instance, kind=OperationKind.RESTORE)
    if new_image_may_have_run:  # the database went back to the moment of the patch, a new database switched to
        (restore,) = restores
        assert restore.state == OperationState.SUCCEEDED, restore.error
        current = InstanceDatabase.objects.get(instance=instance).name
        assert current.startswith(f"{database}_r")
        assert cloud.calls("PUT", rf"/databases/{current}$")[0].body["properties"]["createMode"] == (
            "PointInTimeRestore")
    else:  # the database was never touched by the new image: no restore (it would lose recent writes)
        assert not restores.exists()
        assert cloud.arm_paths(r"/databases/[^/]+$") == [f"{SERVER}/databases/{database}"]

    faults.disarm_all()
    cloud.failures.clear()
    kube.refuse.clear()
    kube.crashing.clear()
    settings.CELLHUB = {**settings.CELLHUB, "UPGRADE_HEALTH_WAIT_SECONDS": 5.0}
    retried = run(operation_retry, operation=operation)
    assert retried.state == OperationState.SUCCEEDED, retried.error
    instance.refresh_from_db()
    assert (instance.state, instance.server_version) == (InstanceState.RUNNING, "2026.5.0")
    assert _image(kube, instance) == NEW
    assert Backup.objects.get(operation=operation, reason=BackupReason.PRE_UPGRADE).state == BackupState.SUCCEEDED


def test_the_health_pass_reads_the_deployment_restarts_an_unhealthy_one_and_flags_it_when_restarts_do_not_help(
    running, cloud, kube, settings
):
    instance = running
    settings.CELLHUB = {**settings.CELLHUB, "HEALTH_RESTART_ATTEMPTS": 1, "HEALTH_RESTART_BACKOFF_SECONDS": 0}
    kube.requests.clear()

    counts = health_check_pass()
    assert counts[HealthStatus.HEALTHY] == 1
    (read,) = [r for r in kube.requests if r["method"] == "GET"]  # one list call per cluster, for all its instances
    assert read["path"] == "/apis/apps/v1/deployments"
    assert read["query"]["labelSelector"] == ["app.kubernetes.io/managed-by=cellhub"]

    # Its server crashes: no pod ready. The pass restarts it through the kubernetes API.
    kube.crashing.add(namespace(instance))
    _deployment(kube, instance)["status"] = {"replicas": 1, "readyReplicas": 0}
    kube.requests.clear()
    counts = health_check_pass()
    assert counts[HealthStatus.UNHEALTHY] == 1 and counts[HealthAction.RESTARTED] == 1
    writes = [(r["method"], r["path"]) for r in kube.requests if r["method"] in ("PATCH", "POST")]
    assert writes[0] == ("PATCH", f"/apis/apps/v1/namespaces/{namespace(instance)}/deployments/acme/scale")
    assert [r["body"] for r in kube.requests if r["path"].endswith("/scale")] == [{"spec": {"replicas": 0}}]
    deployment = [r for r in kube.requests if r["path"].endswith("/deployments/acme") and r["method"] == "PATCH"]
    assert deployment and deployment[-1]["body"]["spec"]["replicas"] == 1  # deployed again, one replica
    assert _image(kube, instance) == OLD

    # Still crashing after its one restart: flagged for staff, no further restart.
    kube.requests.clear()
    counts = health_check_pass()
    assert counts[HealthAction.FLAGGED] == 1
    assert not [r for r in kube.requests if r["method"] in ("PATCH", "POST")]

    # Recovered (the crash fixed): healthy again.
    kube.crashing.clear()
    health_check_pass()  # the kubelet's first look after the fix
    counts = health_check_pass()
    assert counts[HealthStatus.HEALTHY] == 1


def test_the_share_firewall_follows_an_instance_that_comes_back_on_another_node(signup, cloud, kube, settings):
    compute = Pool.objects.get(kind="compute")
    Pool.objects.filter(pk=compute.pk).update(config={**compute.config, "firewall_address": "node"})
    settings.CELLHUB = {**settings.CELLHUB, "HEALTH_RESTART_BACKOFF_SECONDS": 0}
    kube.ready_after = 0
    kube.node = "10.0.1.17"
    instance = signup("acme")
    assert sorted(ip_rules(cloud)) == sorted([HUB, "10.0.1.17"])
    # An operator's own rules on the account, added in the portal: the hub must keep them.
    acls = cloud.resources[ACCOUNT.lower()]["properties"]["networkAcls"]
    acls["ipRules"].append({"value": "198.51.100.0/24", "action": "Allow"})
    acls["virtualNetworkRules"] = [{"id": "/subscriptions/x/resourceGroups/net/providers/Microsoft.Network/"
                                          "virtualNetworks/ops/subnets/jump", "action": "Allow"}]

    # The server crashes; restarted, its pod lands on another node.
    kube.crashing.add(namespace(instance))
    _deployment(kube, instance)["status"] = {"replicas": 1, "readyReplicas": 0}
    kube.node = "10.0.2.44"
    cloud.requests.clear()
    counts = health_check_pass()
    assert counts[HealthAction.RESTARTED] == 1 and counts["firewall_updated"] == 1

    assert sorted(ip_rules(cloud)) == sorted([HUB, "10.0.2.44", "198.51.100.0/24"])  # the old node's is gone
    patch = cloud.calls("PATCH", r"/storageAccounts/cellswest1$")[-1]
    assert patch.body["properties"]["networkAcls"]["virtualNetworkRules"] == acls["virtualNetworkRules"]
    assert patch.body["properties"]["networkAcls"]["defaultAction"] == "Deny"
    instance.share.refresh_from_db()
    assert instance.share.firewall_address == "10.0.2.44"
    # The database server's rule is the compute pool's egress address: unchanged by where the pod runs.
    rule = drivers.for_pool(instance.database_pool)._firewall_rule_name(compute.pk)
    assert cloud.resources[f"{SERVER}/firewallRules/{rule}".lower()]["properties"]["startIpAddress"] == EGRESS
