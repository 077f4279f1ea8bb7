"""Retiring cloud pools made by top-ups deletes what the hub made in the cloud, asserted at the wire (moto plays RDS,
CloudWatch, EKS and STS; every call the drivers make is recorded through botocore's events, ``EksWire``; ``AzureCloud``
behind the azure-core transport plays ARM): an RDS pool's instance (after a final snapshot) and its CloudWatch
alarms; an EKS pool's node group and cluster; an AKS cluster with its node resource group. A cluster staff gave the
hub (by kubeconfig) outlives its pool. An instance still on the pool: refused, nothing deleted.
"""
from __future__ import annotations

import boto3
import pytest
from django.urls import reverse

from cells.choices import OperationState, PoolKind, PoolStatus, Provider
from cells.errors import Refused
from cells.models import Pool
from provisioning import drivers, faults
from provisioning.capacity import pool_drain, pool_mark_failed, pool_retire
from tests.factories import make_instance, make_pool, make_reef, make_region
from tests.provisioning import test_top_up_isolation as isolation
from tests.provisioning.test_top_up_isolation import ONLY, REGION, top_up

pytestmark = pytest.mark.django_db
# Fixtures shared with the top-up isolation tests (pytest finds them by name in this module).
aws_env, eks, kube_apis, aws_reef = isolation.aws_env, isolation.eks, isolation.kube_apis, isolation.aws_reef
aks_cloud, azure_reef = isolation.aks_cloud, isolation.azure_reef
RDS_TEMPLATE = {"master_password_env": "CELLHUB_POOL_SECRET_TEST_RDS", "db_instance_identifier": "template-instance",
                "allocated_storage_gib": 200}


def retire(pool, capture, **kwargs):
    with capture(execute=True):
        operation = pool_retire(pool=pool, **kwargs)
    operation.refresh_from_db()
    return operation


def status(pool) -> str:
    return Pool.objects.values_list("status", flat=True).get(pk=pool.pk)


# -- RDS and its CloudWatch alarms -------------------------------------------------------------------------------


@pytest.fixture
def rds_pool(eks, monkeypatch, sync_tasks, django_capture_on_commit_callbacks):
    """An RDS pool made by a database top-up of an AWS reef, with its three CloudWatch alarms."""
    monkeypatch.setenv("CELLHUB_POOL_SECRET_TEST_RDS", "Master-Passw0rd")
    reef = make_reef(make_region(cloud="aws", location=REGION), capacity_overrides=ONLY["database"])
    make_pool(reef, PoolKind.DATABASE, capacity=1, provider=Provider.AWS_RDS, status=PoolStatus.DRAINING,
              config=RDS_TEMPLATE)
    operation = top_up(reef, django_capture_on_commit_callbacks)
    assert operation.state == OperationState.SUCCEEDED, operation.error
    return Pool.objects.get(pk=operation.pool_id)


def _alarms() -> list[str]:
    found = boto3.client("cloudwatch", region_name=REGION).describe_alarms()["MetricAlarms"]
    return sorted(alarm["AlarmName"] for alarm in found)


def _instances() -> list[str]:
    return [i["DBInstanceIdentifier"] for i in boto3.client("rds", region_name=REGION).describe_db_instances()
            ["DBInstances"]]


def test_retiring_an_rds_pool_deletes_its_instance_and_its_alarms(
        rds_pool, eks, django_capture_on_commit_callbacks, staff_client):
    identifier = drivers.for_pool(rds_pool).identifier
    alarms = sorted(f"{identifier}-{suffix}" for suffix in ("cpu", "free-storage", "connections"))
    assert _alarms() == alarms and identifier in _instances()
    pool_drain(pool=rds_pool)

    operation = retire(rds_pool, django_capture_on_commit_callbacks)

    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert status(rds_pool) == PoolStatus.RETIRED
    assert _alarms() == [] and identifier not in _instances()
    assert all(sorted(call["AlarmNames"]) == alarms for call in eks.called("DeleteAlarms"))
    (deleted,) = eks.called("DeleteDBInstance")
    assert deleted == {"DBInstanceIdentifier": identifier, "SkipFinalSnapshot": False,
                       "FinalDBSnapshotIdentifier": f"{identifier}-final", "DeleteAutomatedBackups": False}
    assert eks.called("ModifyDBInstance")[-1] == {"DBInstanceIdentifier": identifier, "DeletionProtection": False,
                                                  "ApplyImmediately": True}
    snapshots = boto3.client("rds", region_name=REGION).describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
    assert [s["DBSnapshotIdentifier"] for s in snapshots] == [f"{identifier}-final"]  # the data is kept, once
    calls_before = len(eks.calls)
    page = staff_client.get(reverse("admin:cells_pool_change", args=[rds_pool.pk])).content.decode()
    assert "the pool is retired: its alarms were deleted with it" in page
    assert eks.calls[calls_before:] == []  # the retired pool's page asks its cloud nothing


def test_an_rds_pool_an_instance_still_uses_is_refused_and_nothing_is_deleted(rds_pool, eks):
    make_instance(name="still-here", reef=rds_pool.reef, database_pool=rds_pool, state="stopped")
    pool_drain(pool=rds_pool)
    calls_before = len(eks.calls)

    with pytest.raises(Refused) as refused:
        pool_retire(pool=rds_pool)

    assert refused.value.current_state == "draining" and refused.value.extra["instances"] == ["still-here"]
    assert eks.calls[calls_before:] == []  # not one cloud call
    assert len(_alarms()) == 3 and drivers.for_pool(rds_pool).identifier in _instances()


def test_an_rds_retire_failing_after_the_alarms_keeps_the_pool_and_the_retry_deletes_the_instance(
        rds_pool, eks, django_capture_on_commit_callbacks):
    identifier = drivers.for_pool(rds_pool).identifier
    pool_drain(pool=rds_pool)
    faults.arm("retire.pool.before", "permanent")

    failed = retire(rds_pool, django_capture_on_commit_callbacks)

    assert failed.state == OperationState.FAILED and status(rds_pool) == PoolStatus.DRAINING
    assert _alarms() == [] and identifier in _instances()  # the alarms went; the instance not yet
    retried = retire(rds_pool, django_capture_on_commit_callbacks)
    assert retried.pk == failed.pk and retried.state == OperationState.SUCCEEDED, retried.error
    assert identifier not in _instances() and status(rds_pool) == PoolStatus.RETIRED


# -- EKS -----------------------------------------------------------------------------------------------------------


def eks_pool(aws_reef, eks, kube_apis, capture):
    """A compute pool an AWS top-up made (its own EKS cluster and node group), drained: (the pool, its cluster)."""
    eks.servers.append(kube_apis())
    made = top_up(aws_reef["reef"], capture)
    assert made.state == OperationState.SUCCEEDED, made.error
    pool = Pool.objects.get(pk=made.pool_id)
    name = pool.config["eks_cluster"]
    assert list(eks.backend().clusters) == [name] and list(eks.backend().clusters[name].nodegroups) == [f"{name}-nodes"]
    pool_drain(pool=pool)
    return pool, name


def test_retiring_an_eks_pool_made_by_a_top_up_deletes_its_node_group_and_cluster_and_nothing_else(
        aws_reef, eks, kube_apis, sync_tasks, django_capture_on_commit_callbacks):
    pool, name = eks_pool(aws_reef, eks, kube_apis, django_capture_on_commit_callbacks)

    operation = retire(pool, django_capture_on_commit_callbacks)

    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert status(pool) == PoolStatus.RETIRED
    assert eks.backend().clusters == {}
    assert eks.called("DeleteNodegroup") == [{"clusterName": name, "nodegroupName": f"{name}-nodes"}]
    assert eks.called("DeleteCluster") == [{"name": name}]

    # The cluster staff gave the hub (the template, by kubeconfig) outlives its pool: retired, no cloud call.
    template = aws_reef["template"]
    pool_drain(pool=template)
    calls_before = len(eks.calls)
    operation = retire(template, django_capture_on_commit_callbacks)
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert status(template) == PoolStatus.RETIRED
    assert [name for name, _ in eks.calls[calls_before:]] == []
    assert aws_reef["given"].requests == []


def test_an_eks_pool_is_retired_only_once_its_cluster_is_gone(
        aws_reef, eks, kube_apis, sync_tasks, django_capture_on_commit_callbacks):
    pool, name = eks_pool(aws_reef, eks, kube_apis, django_capture_on_commit_callbacks)
    # EKS takes minutes to delete a cluster: here it stays DELETING through every wait the hub makes.
    eks.backend().clusters[name].status = "DELETING"

    operation = retire(pool, django_capture_on_commit_callbacks)

    assert operation.state != OperationState.SUCCEEDED
    assert "still DELETING" in operation.error
    assert status(pool) == PoolStatus.DRAINING  # not retired while its cluster exists
    assert list(eks.backend().clusters) == [name]

    del eks.backend().clusters[name]  # the cloud finishes; a retry finds it gone and retires the pool
    operation = retire(pool, django_capture_on_commit_callbacks)
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert status(pool) == PoolStatus.RETIRED


# -- AKS -----------------------------------------------------------------------------------------------------------


def test_retiring_an_aks_pool_made_by_a_top_up_deletes_its_managed_cluster(
        azure_reef, aks_cloud, kube_apis, sync_tasks, django_capture_on_commit_callbacks):
    aks_cloud.new_cluster_servers.append(kube_apis().host)
    made = top_up(azure_reef["reef"], django_capture_on_commit_callbacks)
    assert made.state == OperationState.SUCCEEDED, made.error
    pool = Pool.objects.get(pk=made.pool_id)
    assert aks_cloud.arm_paths(r"/managedClusters/") != []
    pool_mark_failed(pool=pool, reason="cluster unhealthy")

    operation = retire(pool, django_capture_on_commit_callbacks)

    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert status(pool) == PoolStatus.RETIRED
    assert aks_cloud.arm_paths(r"/managedClusters/|/MC_") == []  # nor its node resource group
    (delete,) = aks_cloud.calls("DELETE", r"/managedClusters/")
    assert delete.path == pool.external_id
