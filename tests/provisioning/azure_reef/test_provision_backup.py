"""Provision, backup, point-in-time restore and a database pool top-up on an Azure reef (Azure SQL elastic pool +
Azure Files + AKS + Azure DNS for the hub domain), driven through the hub's services as a signup drives them; and a
provision failing at each step leaves nothing behind, then succeeds on a retry. The reef is ``conftest.py``'s."""
from __future__ import annotations

from datetime import timedelta

import pytds
import pytest
from django.utils import timezone

from cells.choices import InstanceState, OperationState, PoolKind, PoolStatus, ShareStatus
from cells.models import Operation, Pool, Share
from provisioning import drivers, faults
from provisioning.backups import instance_backup, instance_restore
from provisioning.capacity.services import reef_top_up
from provisioning.health import pool_alarm_states
from provisioning.lifecycle import instance_retry_provision
from provisioning.models import Backup, BackupState, InstanceDatabase
from provisioning.operations import operation_retry
from tests.provisioning.azure_reef.conftest import (
    DNS_API,
    DOMAIN,
    EGRESS,
    HUB,
    INGRESS,
    SERVER,
    SQL_API,
    STORAGE_API,
    ZONE,
    ip_rules,
    namespace,
)

pytestmark = pytest.mark.django_db


def _secret(kube, instance, name):
    return kube.objects.get(("secrets", drivers.for_pool(Pool.objects.get(kind="compute")).namespace(instance), name))


def test_provision_backup_and_point_in_time_restore_on_an_azure_reef(signup, reef, cloud, kube, tds, sync_tasks,
                                                                      django_capture_on_commit_callbacks):
    instance = signup("acme")
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING

    database = drivers.for_pool(reef["database"]).database_name(instance)
    server = SERVER
    put = cloud.calls("PUT", rf"/databases/{database}$")[0]
    assert put.query["api-version"] == [SQL_API]
    assert put.body["properties"]["elasticPoolId"] == f"{server}/elasticPools/ep-1"
    rule_name = drivers.for_pool(reef["database"])._firewall_rule_name(reef["compute"].pk)
    rule = cloud.resources[f"{server}/firewallRules/{rule_name}".lower()]
    assert rule["properties"] == {"startIpAddress": EGRESS, "endIpAddress": EGRESS}  # the instances, not only the hub
    assert [db for db, _ in tds.statements] == [database] * 4
    patch = cloud.calls("PATCH", r"/storageAccounts/cellswest1$")[-1]
    assert patch.query["api-version"] == [STORAGE_API]
    assert patch.body["properties"]["networkAcls"]["ipRules"] == [
        {"value": EGRESS, "action": "Allow"}, {"value": HUB, "action": "Allow"}]  # sorted, as the driver sends them
    assert patch.body["properties"]["networkAcls"]["defaultAction"] == "Deny"
    # Azure DNS: the other types at the name are looked for (and would be removed), then the A record written.
    dns = [(call.method, call.path) for call in cloud.calls(path_regex=r"/dnszones/")]
    assert dns == [("GET", f"{ZONE}/AAAA/acme"), ("GET", f"{ZONE}/CNAME/acme"), ("PUT", f"{ZONE}/A/acme")]
    record = cloud.calls("PUT", r"/dnszones/")[0]
    assert record.query["api-version"] == [DNS_API]
    assert record.body == {"properties": {"TTL": 300, "ARecords": [{"ipv4Address": INGRESS}]}}
    assert drivers.for_dns(instance.region).lookup(name="acme") == INGRESS
    assert instance.hostname == f"acme.{DOMAIN}"
    storage_secret = _secret(kube, instance, f"{instance.name}-storage")
    assert storage_secret["stringData"] == {"azurestorageaccountname": "cellswest1",
                                            "azurestorageaccountkey": "key-of-cellswest1=="}

    with django_capture_on_commit_callbacks(execute=True):
        backup_operation = instance_backup(instance=instance)
    backup_operation.refresh_from_db()
    assert backup_operation.state == OperationState.SUCCEEDED
    backup = Backup.objects.get(operation=backup_operation)
    assert backup.state == BackupState.SUCCEEDED
    assert backup.checksum == cloud.resources[f"{server}/databases/{database}".lower()]["properties"]["databaseId"]

    point = backup.taken_at + timedelta(seconds=1)
    Backup.objects.filter(pk=backup.pk).update(taken_at=backup.taken_at - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        operation = instance_restore(instance=instance, point_in_time=point - timedelta(hours=1))
    operation.refresh_from_db()
    assert operation.state == OperationState.SUCCEEDED, operation.error
    new = InstanceDatabase.objects.get(instance=instance).name
    assert new.startswith(f"{database}_r")
    restore = cloud.calls("PUT", rf"/databases/{new}$")[0]
    assert restore.body["properties"]["createMode"] == "PointInTimeRestore"
    assert restore.body["properties"]["sourceDatabaseId"] == f"{server}/databases/{database}"
    assert restore.body["properties"]["elasticPoolId"] == f"{server}/elasticPools/ep-1"
    assert tds.statements[-1][0] == new  # the contained user exists in the restored database too
    database_secret = _secret(kube, instance, f"{instance.name}-database")
    assert f"/{new}?" in database_secret["stringData"]["DATABASE_URL"]  # switched in one step


def _break(case, cloud, kube, tds):
    """Arm one failure of a provision: a failpoint after one of our steps, or Azure / the cluster refusing a call."""
    kind, detail = case
    if kind == "failpoint":
        faults.arm(f"provision.{detail}.after", "permanent")
    elif kind == "database LRO fails":
        cloud.fail_lro("PUT", r"/databases/[^/]+_i\d+$")
    elif kind == "firewall rule refused":
        cloud.fail("PUT", r"/firewallRules/[^/]+-compute-p\d+$", times=100)
    elif kind == "storage firewall conflict":
        cloud.fail("PATCH", r"/storageAccounts/cellswest1$", status=409, code="Conflict")
    elif kind == "storage keys forbidden":
        cloud.fail("POST", r"/listKeys$", status=403, code="AuthorizationFailed")
    elif kind == "sql unreachable":
        tds.fail = pytds.OperationalError("Login timeout expired")
    elif kind == "cluster failing":
        kube.refuse[("POST", "deployments")] = [500, 1000]
    elif kind == "dns failing":
        cloud.fail("PUT", r"/dnszones/.*/A/", status=500, times=1000)


def _heal(cloud, kube, tds):
    faults.disarm_all()
    cloud.failures.clear()
    cloud.lro_failures.clear()
    kube.refuse.clear()
    tds.fail = None


PROVISION_FAILURES = [
    *[("failpoint", step) for step in ("place", "database", "share", "compute", "firewall", "dns")],
    ("database LRO fails", "database"), ("firewall rule refused", "database"), ("sql unreachable", "database"),
    ("storage keys forbidden", "compute"), ("cluster failing", "compute"), ("storage firewall conflict", "firewall"),
    ("dns failing", "dns"),
]


def _assert_released(instance, operation, before, cloud, kube):
    instance.refresh_from_db()
    operation.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert operation.state == OperationState.FAILED and operation.steps == []  # a retry starts from the top
    assert "everything taken was released" in operation.error, operation.error
    assert cloud.state() == before  # no database, firewall rule, address, file, snapshot or record left
    assert kube.namespaced(namespace(instance)) == {}  # no namespace, Secret, Deployment, Service, Ingress, pod
    assert (instance.database_pool_id, instance.compute_pool_id, instance.reef_id) == (None, None, None)
    assert set(Share.objects.values_list("status", "instance", "firewall_address")) == {
        (ShareStatus.AVAILABLE, None, "")}


@pytest.mark.parametrize("case", PROVISION_FAILURES, ids=[f"{kind}-{step}" for kind, step in PROVISION_FAILURES])
def test_a_provision_failing_at_each_step_leaves_nothing_behind_and_a_retry_succeeds(
    case, signup, reef, cloud, kube, tds, run
):
    before = cloud.state()
    if case == ("failpoint", "place"):
        # A signup places the instance itself: ``place`` runs as a step only when a failed provision is retried.
        _break(("dns failing", "dns"), cloud, kube, tds)
        instance = signup("broken")
        _heal(cloud, kube, tds)
        _break(case, cloud, kube, tds)
        run(instance_retry_provision, instance=instance)
    else:
        _break(case, cloud, kube, tds)
        instance = signup("broken")
    operation = Operation.objects.get(instance=instance)
    _assert_released(instance, operation, before, cloud, kube)
    if case[0] == "failpoint":
        assert f"provision.{case[1]}.after" in operation.error

    _heal(cloud, kube, tds)
    retried = run(instance_retry_provision, instance=instance)
    instance.refresh_from_db()
    assert retried.pk == operation.pk and retried.state == OperationState.SUCCEEDED, retried.error
    assert instance.state == InstanceState.RUNNING
    database = drivers.for_pool(reef["database"]).database_name(instance)
    assert cloud.arm_paths(r"/databases/[^/]+$") == [f"{SERVER}/databases/{database}"]
    assert sorted(ip_rules(cloud)) == sorted([HUB, EGRESS])
    assert drivers.for_dns(instance.region).lookup(name="broken") == INGRESS
    assert ("deployments", namespace(instance), "broken") in kube.objects
    assert ("secrets", namespace(instance), "broken-storage") in kube.objects


def test_a_database_pool_top_up_creates_its_alerts_and_a_failed_one_removes_them(reef, cloud, sync_tasks, tds,
                                                                                 django_capture_on_commit_callbacks):
    Pool.objects.filter(pk=reef["database"].pk).update(capacity=1)
    with django_capture_on_commit_callbacks(execute=True):
        operations = reef_top_up(reef=reef["reef"])
    database_ops = [op for op in operations if op.pool.kind == PoolKind.DATABASE]
    assert database_ops, operations
    pool = Pool.objects.get(pk=database_ops[0].pool_id)
    assert pool.status == PoolStatus.AVAILABLE, pool.status_reason
    alerts = cloud.arm_paths(r"/metricAlerts/")
    assert [path.rsplit("/", 1)[-1] for path in alerts] == sorted(
        f"{drivers.for_pool(pool)._alert_name(metric)}" for metric in ("cpu_percent", "storage_percent",
                                                                       "sessions_percent"))
    alert = cloud.calls("PUT", r"/metricAlerts/")[0]
    assert alert.body["properties"]["scopes"] == [drivers.for_pool(pool).elastic_pool_id()]
    assert alert.body["properties"]["criteria"]["odata.type"] == (
        "Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria")
    assert set(pool_alarm_states(pool=pool).values()) == {"Healthy"}

    # A top-up failing after its alerts were made removes them with the pool.
    cloud.fail("PUT", r"/metricAlerts/.*sessions-percent$", times=100)
    Pool.objects.filter(pk=pool.pk).update(capacity=1)
    before = set(cloud.arm_paths(r"/metricAlerts/"))
    with django_capture_on_commit_callbacks(execute=True):
        operations = reef_top_up(reef=reef["reef"])
    failed = Pool.objects.get(pk=[op for op in operations if op.pool.kind == PoolKind.DATABASE][0].pool_id)
    assert failed.status == PoolStatus.FAILED
    assert set(cloud.arm_paths(r"/metricAlerts/")) == before
    assert timezone.now()


DATABASE_TOP_UP_FAILURES = [
    *[("failpoint", step) for step in ("pool", "alarms", "shares")],
    ("elastic pool creation fails", "pool"), ("alert refused", "alarms"),
]


@pytest.mark.parametrize("case", DATABASE_TOP_UP_FAILURES, ids=[f"{k}-{s}" for k, s in DATABASE_TOP_UP_FAILURES])
def test_a_database_pool_top_up_failing_at_each_step_deletes_only_what_it_made_and_a_retry_makes_it(
    case, reef, cloud, settings, sync_tasks, tds, django_capture_on_commit_callbacks
):
    settings.CELLHUB = {**settings.CELLHUB, "CAPACITY": {
        "FLOOR": {"database": 6, "compute": 0, "storage": 0}, "POOL_SIZE": {"database": 50}, "MAX_POOLS_PER_PASS": 1}}
    before = cloud.state()  # the reef's own server and elastic pool (no database in it yet) among it
    kind, step = case
    if kind == "failpoint":
        faults.arm(f"top_up.{step}.after", "permanent")
    elif kind == "elastic pool creation fails":
        cloud.fail_lro("PUT", r"/elasticPools/[^/]+$")
    else:
        cloud.fail("PUT", r"/metricAlerts/.*storage-percent$", status=400)
    with django_capture_on_commit_callbacks(execute=True):
        (operation,) = reef_top_up(reef=reef["reef"])
    operation.refresh_from_db()
    pool = Pool.objects.get(pk=operation.pool_id)

    assert operation.state == OperationState.FAILED and pool.status == PoolStatus.FAILED
    assert "everything the top-up made was deleted" in operation.error, operation.error
    # The new pool's elastic pool and alerts are gone; the server it shares with the reef's pool, and that pool's
    # elastic pool, are as they were.
    after = cloud.state()
    assert sorted(set(after["resources"]) - set(before["resources"])) == []
    assert sorted(set(before["resources"]) - set(after["resources"])) == []
    assert after == before

    faults.disarm_all()
    cloud.failures.clear()
    cloud.lro_failures.clear()
    with django_capture_on_commit_callbacks(execute=True):
        retried = operation_retry(operation=operation)
    retried.refresh_from_db()
    pool.refresh_from_db()
    assert retried.state == OperationState.SUCCEEDED, retried.error
    assert pool.status == PoolStatus.AVAILABLE
    assert sorted(cloud.arm_paths(r"/elasticPools/[^/]+$")) == sorted(
        [f"{SERVER}/elasticPools/ep-1", drivers.for_pool(pool).elastic_pool_id()])
    assert len(cloud.arm_paths(r"/metricAlerts/[^/]+$")) == 3


def test_deleting_an_azure_sql_pool_deletes_its_server_only_once_nothing_else_is_on_it(reef, cloud):
    template = reef["database"]
    solo = Pool.objects.create(reef=reef["reef"], name="database-solo", kind=PoolKind.DATABASE, capacity=5,
                               provider=template.provider, config={**template.config, "elastic_pool": "ep-2"})
    drivers.for_pool(solo).provision_pool()
    assert sorted(cloud.arm_paths(r"/elasticPools/[^/]+$")) == [f"{SERVER}/elasticPools/ep-1",
                                                                 f"{SERVER}/elasticPools/ep-2"]

    drivers.for_pool(solo).delete_pool()  # ep-1 is still on the server: it stays
    assert cloud.arm_paths(r"/elasticPools/[^/]+$") == [f"{SERVER}/elasticPools/ep-1"]
    assert cloud.arm_paths(r"/servers/[^/]+$") == [SERVER]

    drivers.for_pool(template).delete_pool()  # the last one: the server goes with it
    assert cloud.arm_paths(r"/servers/") == []
    (delete,) = cloud.calls("DELETE", r"/servers/[^/]+$")
    assert delete.query["api-version"] == [SQL_API]
