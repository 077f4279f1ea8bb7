"""The plans on an Azure reef (Azure SQL elastic pool + Azure Files + AKS), driven through the hub's services as a
signup drives them. Azure is ``AzureCloud`` behind the SDKs' own default transport (every azure-mgmt and storage
client the drivers build uses it), Kubernetes is ``FakeKubeApi`` on 127.0.0.1 reached through a kubeconfig, and
python-tds' ``connect`` records the T-SQL. Nothing of ours is replaced."""
from __future__ import annotations

from datetime import timedelta

import azure.core.pipeline.transport._requests_basic as azure_requests_transport
import azure.identity
import azure.storage.blob._shared.base_client as blob_base
import azure.storage.fileshare._shared.base_client as fileshare_base
import pytds
import pytest
from django.utils import timezone

from cells.choices import InstanceState, OperationState, PoolKind, PoolStatus, Provider
from cells.models import Instance, Operation, Pool
from provisioning import drivers
from provisioning.backups import instance_backup, instance_restore
from provisioning.capacity.services import reef_top_up
from provisioning.health import pool_alarm_states
from provisioning.models import Backup, BackupState, InstanceDatabase
from tests.factories import make_pool, make_reef, make_region
from tests.provisioning.drivers.azure_cloud import AzureCloud
from tests.provisioning.drivers.azure_transport import FakeCredential
from tests.provisioning.drivers.test_azure import RecordingTds
from tests.provisioning.drivers.test_kubernetes import FakeKubeApi

pytestmark = pytest.mark.django_db
SUB = "00000000-0000-0000-0000-000000000001"
EGRESS = "20.51.7.9"


@pytest.fixture
def cloud(monkeypatch, settings):
    cloud = AzureCloud()
    # The SDKs' own default HTTP layer (azure-core's RequestsTransport) answers from ``cloud``.
    for module in (azure_requests_transport, fileshare_base, blob_base):
        monkeypatch.setattr(module, "RequestsTransport", lambda *args, **kwargs: cloud)
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", FakeCredential)
    monkeypatch.setenv("CELLHUB_POOL_SECRET_TEST_SQL_ADMIN", "Admin-Passw0rd!")
    settings.CELLHUB = {**settings.CELLHUB, "CLOUD_BACKOFF": 0, "DNS_PROVIDER": "local"}
    return cloud


@pytest.fixture
def tds(monkeypatch):
    recorder = RecordingTds()
    monkeypatch.setattr(pytds, "connect", recorder.connect)
    return recorder


@pytest.fixture
def kube(tmp_path):
    api = FakeKubeApi().start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: aks\n"
        f"clusters: [{{name: aks, cluster: {{server: '{api.host}'}}}}]\n"
        "contexts: [{name: aks, context: {cluster: aks, user: hub}}]\nusers: [{name: hub, user: {token: t}}]\n"
    )
    api.kubeconfig = str(kubeconfig)
    yield api
    api.stop()


@pytest.fixture
def reef(cloud, kube):
    reef = make_reef(make_region(cloud="azure", location="westus2"))
    sql = {"subscription_id": SUB, "resource_group": "rg-cells", "server": "sql-west-1", "elastic_pool": "ep-1",
           "admin_password_env": "CELLHUB_POOL_SECRET_TEST_SQL_ADMIN", "hub_address": "203.0.113.10"}
    files = {"subscription_id": SUB, "resource_group": "rg-cells", "account_name": "cellswest1",
             "hub_address": "203.0.113.10", "archive_account": "cellsdeep"}
    database = make_pool(reef, PoolKind.DATABASE, provider=Provider.AZURE_SQL, capacity=5, config=sql)
    storage = make_pool(reef, PoolKind.STORAGE, provider=Provider.AZURE_FILES, capacity=3, config=files)
    compute = make_pool(reef, PoolKind.COMPUTE, provider=Provider.KUBERNETES, capacity=5,
                        config={"kubeconfig": kube.kubeconfig, "egress_address": EGRESS})
    drivers.for_pool(database).provision_pool()
    drivers.for_pool(storage).provision_pool()
    for share in storage.shares.all():
        drivers.for_pool(storage).create_share(share=share)
    cloud.requests.clear()
    return {"reef": reef, "database": database, "storage": storage, "compute": compute}


@pytest.fixture
def signup(client, reef, sync_tasks, django_capture_on_commit_callbacks):
    def post(name):
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post("/signup/", {"email": f"{name}@example.com", "password": "a-long-enough-passphrase",
                                                "name": name, "region": reef["reef"].region.pk})
        assert response.status_code == 302, response.content
        return Instance.objects.get(name=name)
    return post


def _secret(kube, instance, name):
    return kube.objects.get(("secrets", drivers.for_pool(Pool.objects.get(kind="compute")).namespace(instance), name))


def test_provision_backup_and_point_in_time_restore_on_an_azure_reef(signup, reef, cloud, kube, tds, sync_tasks,
                                                                      django_capture_on_commit_callbacks):
    instance = signup("acme")
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING

    database = drivers.for_pool(reef["database"]).database_name(instance)
    server = f"/subscriptions/{SUB}/resourceGroups/rg-cells/providers/Microsoft.Sql/servers/sql-west-1"
    put = cloud.calls("PUT", rf"/databases/{database}$")[0]
    assert put.body["properties"]["elasticPoolId"] == f"{server}/elasticPools/ep-1"
    rule_name = drivers.for_pool(reef["database"])._firewall_rule_name(reef["compute"].pk)
    rule = cloud.resources[f"{server}/firewallRules/{rule_name}".lower()]
    assert rule["properties"] == {"startIpAddress": EGRESS, "endIpAddress": EGRESS}  # the instances, not only the hub
    assert [db for db, _ in tds.statements] == [database] * 4
    patch = cloud.calls("PATCH", r"/storageAccounts/cellswest1$")[-1]
    assert {"value": EGRESS, "action": "Allow"} in patch.body["properties"]["networkAcls"]["ipRules"]
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


def test_a_refused_firewall_rule_fails_the_provision_and_leaves_nothing(signup, reef, cloud, kube, tds):
    cloud.fail("PUT", r"/firewallRules/", times=100)
    instance = signup("broken")
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert cloud.arm_paths(r"/databases/") == []  # the database it made is deleted
    assert not [key for key in kube.objects if key[1] and key[1].endswith(f"i{instance.pk}")]
    assert Operation.objects.get(instance=instance).state == OperationState.FAILED


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
