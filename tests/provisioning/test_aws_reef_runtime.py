"""Upgrades and health on an AWS reef (RDS + Storage Gateway + EKS + Route 53), through the hub's services as staff,
rollouts and the scheduler drive them, at each SDK's wire (``tests/provisioning/aws_reef.py``): the deployment is
read and changed through the kubernetes API only; a failure at each step rolls back, leaves nothing behind and a
retry succeeds."""
from __future__ import annotations

import time

import pytest

from cells.choices import InstanceState, OperationKind, OperationState, ReleaseState
from cells.models import Operation, Release, Share
from provisioning import drivers, faults
from provisioning.health import health_check_pass
from provisioning.models import Backup, BackupReason, HealthAction, HealthCheck, HealthStatus, Restore, RestoreState
from provisioning.operations import operation_retry
from provisioning.rollouts import instance_upgrade
from tests.provisioning import aws_reef as reef_fixtures
from tests.provisioning.aws_reef import (
    DB_BACKUPS,
    rds_instances,
    running,
)

pytestmark = pytest.mark.django_db
# The AWS reef's fixtures (tests/provisioning/aws_reef.py), used by name.
aws_reef, aws_wire, eks, run = reef_fixtures.aws_reef, reef_fixtures.aws_wire, reef_fixtures.eks, reef_fixtures.run
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/cellhub/server"
UPGRADE_STEPS = ("backup", "patch image", "wait for health", "record version")


@pytest.fixture
def release():
    return Release.objects.create(version="2026.5.0", image=IMAGE, state=ReleaseState.AVAILABLE)


def _image(eks, instance) -> str:
    namespace = drivers.for_pool(instance.compute_pool).namespace(instance)
    return eks.deployment(namespace)["spec"]["template"]["spec"]["containers"][0]["image"]


def _finished(operation) -> Operation:
    operation.refresh_from_db()
    return operation


# ---- upgrade ------------------------------------------------------------------------------------------------


def test_an_upgrade_backs_up_patches_the_deployments_image_and_waits_for_its_pods(aws_reef, aws_wire, eks, run,
                                                                                  release):
    instance = running(run, aws_reef)
    old_image = _image(eks, instance)
    eks.requests.clear()

    operation = _finished(run(instance_upgrade, instance=instance, release=release))

    assert operation.state == OperationState.SUCCEEDED, operation.error
    instance.refresh_from_db()
    assert (instance.state, instance.server_version) == (InstanceState.RUNNING, "2026.5.0")
    assert old_image.endswith(":2026.4.1") and _image(eks, instance) == f"{IMAGE}:2026.5.0"
    (patch,) = [r for r in eks.requests if r["method"] == "PATCH"]
    namespace = drivers.for_pool(instance.compute_pool).namespace(instance)
    assert patch["path"] == f"/apis/apps/v1/namespaces/{namespace}/deployments/{instance.name}"
    assert patch["body"] == {"spec": {"template": {"spec": {"containers": [
        {"name": "server", "image": f"{IMAGE}:2026.5.0"}]}}}}
    # health was waited for through the API: the deployment read after the patch
    after = eks.requests[eks.requests.index(patch) + 1:]
    assert [r["method"] for r in after] and all(r["method"] == "GET" and r["path"].endswith("/deployments")
                                               for r in after)
    backup = Backup.objects.get(operation=operation, reason=BackupReason.PRE_UPGRADE)
    assert backup.location.startswith(f"s3://{DB_BACKUPS}/")
    aws_wire.stub.assert_no_pending_responses()


@pytest.mark.parametrize("step", [*UPGRADE_STEPS, "unhealthy"])
def test_an_upgrade_failing_at_any_step_rolls_back_leaves_nothing_and_a_retry_succeeds(
    step, aws_reef, aws_wire, eks, run, release
):
    """A failpoint after each step's work, or (``unhealthy``) the new image's pods never become ready. Once the new
    image ran, the rollback also restores the database to the moment before it (RDS point in time)."""
    instance = running(run, aws_reef)
    old_image = _image(eks, instance)
    rds = drivers.for_pool(instance.database_pool)
    time.sleep(1.1)  # RDS restores to whole seconds after the instance was created: it has lived one
    if step == "unhealthy":
        eks.crashing.add(f"{IMAGE}:2026.5.0")
    else:
        faults.arm(f"upgrade.{step}.after", "permanent")

    operation = _finished(run(instance_upgrade, instance=instance, release=release))

    assert operation.state == OperationState.FAILED and "rolled back" in operation.error, operation.error
    instance.refresh_from_db()
    assert (instance.state, instance.server_version) == (InstanceState.RUNNING, "2026.4.1")
    assert _image(eks, instance) == old_image
    restores = Restore.objects.filter(instance=instance)
    if step == "backup":
        assert not restores.exists()  # the new image never ran: nothing to restore
    else:
        (restore,) = restores
        assert restore.state == RestoreState.SUCCEEDED and restore.operation.state == OperationState.SUCCEEDED
    assert rds_instances() == [rds.identifier]  # the restore's temporary instance is gone

    eks.crashing.clear()
    retried = _finished(run(operation_retry, operation=operation))

    assert retried.state == OperationState.SUCCEEDED, retried.error
    instance.refresh_from_db()
    assert (instance.state, instance.server_version) == (InstanceState.RUNNING, "2026.5.0")
    assert _image(eks, instance) == f"{IMAGE}:2026.5.0"
    assert Operation.objects.filter(instance=instance, kind=OperationKind.UPGRADE).count() == 1
    aws_wire.stub.assert_no_pending_responses()


def test_an_upgrade_rollback_waits_for_rds_to_be_able_to_restore_the_second_it_patched(
    aws_reef, aws_wire, eks, run, release, monkeypatch
):
    """RDS's LatestRestorableTime runs behind now (here 4 s; on AWS up to 5 minutes), so the second a failed
    upgrade patched its image in is not restorable yet when the rollback asks: the restore is queued anyway and
    waits for RDS to catch up (polling DescribeDBInstances), then recovers that second."""
    from datetime import timedelta

    import moto.rds.models
    from moto.core.utils import utcnow

    instance = running(run, aws_reef)
    time.sleep(4.5)  # the instance has lived longer than RDS lags: its window is not empty
    monkeypatch.setattr(moto.rds.models.DBInstance, "latest_restorable_time",
                        property(lambda self: utcnow() - timedelta(seconds=4)))
    eks.crashing.add(f"{IMAGE}:2026.5.0")

    operation = _finished(run(instance_upgrade, instance=instance, release=release))

    assert operation.state == OperationState.FAILED and "database restore to" in operation.error, operation.error
    (restore,) = Restore.objects.filter(instance=instance)
    assert restore.state == RestoreState.SUCCEEDED, restore.operation.error
    patched_at = operation.params.get("patched_at")
    assert patched_at is None  # forgotten with the steps: a retry starts over
    (recover,) = [params for _, name, params in aws_wire.calls if name == "RestoreDBInstanceToPointInTime"]
    assert recover["RestoreTime"] == restore.point_in_time
    assert rds_instances() == [drivers.for_pool(instance.database_pool).identifier]


# ---- health -------------------------------------------------------------------------------------------------


def test_the_health_pass_reads_the_deployment_restarts_a_crashed_one_and_the_share_follows_its_new_node(
    aws_reef, aws_wire, eks, run, settings
):
    settings.CELLHUB = {**settings.CELLHUB, "HEALTH_RESTART_BACKOFF_SECONDS": 0}
    instance = running(run, aws_reef)
    namespace = drivers.for_pool(instance.compute_pool).namespace(instance)
    share = Share.objects.get(instance=instance)
    eks.requests.clear()

    assert health_check_pass()[HealthStatus.HEALTHY] == 1
    # One list per cluster, whatever its size: the hub's deployments (their replicas), then its pods (their nodes,
    # for the shares' firewalls: unchanged here).
    assert [(r["method"], r["path"], r["query"].get("labelSelector")) for r in eks.requests] == [
        ("GET", "/apis/apps/v1/deployments", ["app.kubernetes.io/managed-by=cellhub"]),
        ("GET", "/api/v1/pods", ["app.kubernetes.io/managed-by=cellhub"]),
    ]

    eks.crash(namespace)
    eks.node = "10.0.1.42"  # the restarted pod lands on another node: the share's client list follows it
    aws_reef["gateway"].listed()
    aws_reef["gateway"].client_list(share, "10.0.1.42")
    eks.requests.clear()

    counts = health_check_pass()

    assert counts[HealthStatus.UNHEALTHY] == 1 and counts[HealthAction.RESTARTED] == 1
    assert counts["firewall_updated"] == 1
    check = HealthCheck.objects.filter(instance=instance).latest("checked_at")
    assert "0 of 1 replicas are ready" in check.detail
    scale = next(r for r in eks.requests if r["path"].endswith("/scale"))
    assert (scale["method"], scale["body"]) == ("PATCH", {"spec": {"replicas": 0}})
    deployment = eks.deployment(namespace)
    assert deployment["spec"]["replicas"] == 1 and deployment["status"]["readyReplicas"] == 1
    share.refresh_from_db()
    assert share.firewall_address == "10.0.1.42"
    aws_wire.stub.assert_no_pending_responses()

    counts = health_check_pass()
    assert counts[HealthStatus.HEALTHY] == 1 and counts[HealthAction.RECOVERED] == 1


def test_a_cluster_that_does_not_answer_is_unknown_and_a_failed_restart_is_retried(aws_reef, aws_wire, eks, run,
                                                                                    settings):
    settings.CELLHUB = {**settings.CELLHUB, "HEALTH_RESTART_BACKOFF_SECONDS": 0}
    instance = running(run, aws_reef)
    namespace = drivers.for_pool(instance.compute_pool).namespace(instance)
    eks.crash(namespace)
    eks.fail("GET", "deployments", 403, times=1)
    eks.requests.clear()

    counts = health_check_pass()

    assert counts == {HealthStatus.UNKNOWN: 1, "pruned": 0}  # nothing restarted, no firewall touched
    assert [r["method"] for r in eks.requests] == ["GET"]  # asked once, changed nothing

    eks.fail("PATCH", "deployments", 422, times=1)  # the restart's scale-down is refused
    counts = health_check_pass()
    assert counts[HealthAction.RESTART_FAILED] == 1
    assert eks.deployment(namespace)["status"]["readyReplicas"] == 0

    counts = health_check_pass()
    assert counts[HealthAction.RESTARTED] == 1
    assert eks.deployment(namespace)["status"]["readyReplicas"] == 1
    assert health_check_pass()[HealthAction.RECOVERED] == 1
    aws_wire.stub.assert_no_pending_responses()
