"""A decommission on an Azure reef: the deployment deleted, the share zipped to the Archive tier of the deep-storage
account, a final database backup, the database (with its contained user) and the compute pool's firewall rule
deleted, the share scrubbed (deleted and made again, empty) and returned to its pool with its address out of the
account firewall, the DNS record removed. A failure at any step stops there (the instance stays decommissioning, the
share out of the pool) and a retry finishes: in the end the cloud holds exactly what it held before the signup, plus
the archive."""
from __future__ import annotations

import hashlib
import io
import time
import zipfile

import pytest

from cells.choices import InstanceState, OperationState, ShareStatus
from cells.models import Operation, Share
from provisioning import drivers, faults
from provisioning.backups import instance_decommission
from provisioning.drivers.base import PermanentDriverError, TransientDriverError, resource_prefix
from provisioning.models import Backup, BackupKind, BackupReason, BackupState
from tests.provisioning.azure_reef.conftest import (
    DNS_API,
    EGRESS,
    HUB,
    SERVER,
    SQL_API,
    STORAGE_API,
    SUB,
    ZONE,
    ip_rules,
    namespace,
)

pytestmark = pytest.mark.django_db

FILES = {"notes/": b"", "notes/today.txt": b"the customer's notes", "logo.png": bytes(range(256))}
DEEP = f"/subscriptions/{SUB}/resourceGroups/rg-cells/providers/Microsoft.Storage/storageAccounts/cellsdeep"
PASSWORD = "Admin-Passw0rd!"  # the server admin's (conftest's CELLHUB_POOL_SECRET_TEST_SQL_ADMIN)


def _container() -> str:
    return f"{resource_prefix()}-archive"


@pytest.fixture
def live(signup, cloud, kube):
    """(state of Azure before the signup, the running instance whose share holds ``FILES``)."""
    before = cloud.state()
    instance = signup("acme")
    assert instance.state == InstanceState.RUNNING
    cloud.files[("cellswest1", instance.share.name)].update(FILES)
    return before, instance


def _without_the_archive(state: dict) -> dict:
    """Azure as it is, less the archive container and its blobs (what a decommission is meant to leave)."""
    resources = {key: value for key, value in state["resources"].items()
                 if not key.startswith(f"{DEEP}/blobServices/default/containers/".lower())}
    blobs = {key: value for key, value in state["blobs"].items() if key[:2] != ("cellsdeep", _container())}
    return {**state, "resources": resources, "blobs": blobs}


def _assert_decommissioned(before, instance, share, operation, cloud, kube):
    instance.refresh_from_db()
    share.refresh_from_db()
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert instance.state == InstanceState.DECOMMISSIONED
    # The archive: one zip at the Archive tier, its SHA-256 recorded on the blob and on the hub's backup.
    archive = Backup.objects.get(instance=instance, reason=BackupReason.ARCHIVE)
    assert archive.state == BackupState.SUCCEEDED
    blob_name = f"{share.name}/{archive.details.get('label') or archive.location.rsplit('/', 1)[-1][:-4]}.zip"
    assert archive.location == f"https://cellsdeep.blob.core.windows.net/{_container()}/{blob_name}"
    blobs = {key: blob for key, blob in cloud.blobs.items()
             if key[:2] == ("cellsdeep", _container()) and key[2].endswith(".zip")}
    assert list(blobs) == [("cellsdeep", _container(), blob_name)]  # one archive, however many attempts
    blob = blobs[("cellsdeep", _container(), blob_name)]
    assert blob["tier"] == "Archive"
    assert blob["metadata"]["sha256"] == archive.checksum == hashlib.sha256(blob["data"]).hexdigest()
    with zipfile.ZipFile(io.BytesIO(blob["data"])) as zipped:
        assert {name: zipped.read(name) for name in zipped.namelist()} == {
            path: data for path, data in FILES.items() if not path.endswith("/")}
    final = Backup.objects.get(instance=instance, reason=BackupReason.FINAL, kind=BackupKind.DATABASE)
    assert final.state == BackupState.SUCCEEDED
    # The final backup: one BACPAC in the same container, its SHA-256 the hub's checksum.
    bacpac = f"{resource_prefix()}-i{instance.pk}-database-b{final.pk}.bacpac"
    assert final.location == f"https://cellsdeep.blob.core.windows.net/{_container()}/{bacpac}"
    exports = {key: blob for key, blob in cloud.blobs.items() if key[2].endswith(".bacpac")}
    assert list(exports) == [("cellsdeep", _container(), bacpac)]  # one export, however many attempts
    data = exports[("cellsdeep", _container(), bacpac)]["data"]
    assert data.startswith(f"BACPAC of {final.source} (".encode())
    assert final.checksum == hashlib.sha256(data).hexdigest() and final.size_bytes == len(data)
    # Everything else is as before the signup: no database, no firewall rule, the account's rules as they were, the
    # share empty (made again), no DNS record.
    assert _without_the_archive(cloud.state()) == before
    assert cloud.files[("cellswest1", share.name)] == {}
    assert ip_rules(cloud) == [HUB]
    assert kube.namespaced(namespace(instance)) == {}
    assert (share.status, share.instance_id, share.firewall_address) == (ShareStatus.AVAILABLE, None, "")


def test_decommission_archives_to_deep_storage_scrubs_and_returns_the_share(live, cloud, kube, run):
    before, instance = live
    share = instance.share
    database = drivers.for_pool(instance.database_pool).database_name(instance)
    rule = drivers.for_pool(instance.database_pool)._firewall_rule_name(instance.compute_pool_id)
    assert (f"{SERVER}/firewallRules/{rule}".lower()) in cloud.resources
    assert ("secrets", namespace(instance), "acme-storage") in kube.objects
    cloud.requests.clear()

    operation = run(instance_decommission, instance=instance, confirm_name="acme")

    _assert_decommissioned(before, instance, share, operation, cloud, kube)
    # At the wire.
    container = cloud.calls("PUT", r"/containers/")[0]
    assert container.path == f"{DEEP}/blobServices/default/containers/{_container()}"
    assert container.query["api-version"] == [STORAGE_API]
    assert container.body == {"properties": {"publicAccess": "None"}}
    upload = [call for call in cloud.requests if call.method == "PUT" and ".blob.core.windows.net" in call.url]
    assert len(upload) == 1
    assert upload[0].headers["x-ms-access-tier"] == "Archive" and upload[0].headers["x-ms-blob-type"] == "BlockBlob"
    assert upload[0].headers["x-ms-meta-sha256"] == Backup.objects.get(reason=BackupReason.ARCHIVE).checksum
    reads = {call.path for call in cloud.requests if call.method == "GET" and ".file.core.windows.net" in call.url
             and "comp" not in call.query}
    assert reads == {f"/{share.name}/notes/today.txt", f"/{share.name}/logo.png"}
    (drop,) = cloud.calls("DELETE", r"/databases/")
    assert drop.path == f"{SERVER}/databases/{database}" and drop.query["api-version"] == [SQL_API]
    # The final backup: a BACPAC export signed in as the server admin, the archive account's key from listKeys.
    final = Backup.objects.get(reason=BackupReason.FINAL)
    (keys,) = cloud.calls("POST", r"/listKeys$")
    assert keys.path == f"{DEEP}/listKeys"
    (export,) = cloud.calls("POST", r"/export$")
    assert export.path == f"{SERVER}/databases/{database}/export" and export.query["api-version"] == [SQL_API]
    assert export.body == {
        "storageKeyType": "StorageAccessKey", "storageKey": "key-of-cellsdeep==", "storageUri": final.location,
        "administratorLogin": "cellhubadmin", "administratorLoginPassword": PASSWORD, "authenticationType": "Sql",
    }
    recorded_text = f"{final.details} {final.error} {operation.params} {operation.error}"
    assert PASSWORD not in recorded_text and "key-of-cellsdeep" not in recorded_text
    (unrule,) = cloud.calls("DELETE", r"/firewallRules/")
    assert unrule.path == f"{SERVER}/firewallRules/{rule}"
    (scrub,) = cloud.calls("DELETE", r"/shares/")
    assert scrub.path.endswith(f"/fileServices/default/shares/{share.name}")
    assert scrub.query["$include"] == ["snapshots"]
    remake = cloud.calls("PUT", rf"/shares/{share.name}$")[-1]
    assert remake.body == {"properties": {"shareQuota": 100, "enabledProtocols": "SMB"}}
    records = [(call.method, call.path) for call in cloud.calls("DELETE", r"/dnsZones/")]
    assert records == [("DELETE", f"{ZONE}/{kind}/acme") for kind in ("A", "AAAA", "CNAME")]
    assert cloud.calls("DELETE", r"/dnsZones/")[0].query["api-version"] == [DNS_API]
    deletes = [r["path"] for r in kube.requests if r["method"] == "DELETE"]
    assert deletes == [f"/api/v1/namespaces/{namespace(instance)}"]
    # Compute went first, the DNS record last (the share was archived while nothing wrote to it).
    order = [call.path for call in cloud.requests if call.method in ("PUT", "DELETE", "POST")]
    assert order.index(upload[0].path) < order.index(export.path) < order.index(drop.path) < order.index(scrub.path)
    assert order[-1] == f"{ZONE}/CNAME/acme"


def _break(case, cloud, kube, share):
    kind, detail = case
    if kind == "failpoint":
        faults.arm(f"decommission.{detail}.after", "permanent")
    elif kind == "cluster failing":
        kube.refuse[("DELETE", "namespaces")] = [500, 1000]
    elif kind == "archive container forbidden":
        cloud.fail("PUT", r"/blobServices/default/containers/", status=403, code="AuthorizationFailed")
    elif kind == "archive upload failing":
        cloud.fail("PUT", rf"/{share.name}/[^/]+\.zip$", times=1000)  # HTTP 500 from the blob service
    elif kind == "database delete fails":
        cloud.fail_lro("DELETE", r"/databases/[^/]+_i\d+$")
    elif kind == "share being deleted":
        cloud.fail("PUT", rf"/fileServices/default/shares/{share.name}$", status=409, code="ShareBeingDeleted",
                   times=1000)
    elif kind == "storage firewall failing":
        cloud.fail("PATCH", r"/storageAccounts/cellswest1$", status=500, times=1000)
    elif kind == "dns refused":
        cloud.fail("DELETE", r"/dnsZones/.*/A/acme$", status=403, code="AuthorizationFailed")


STEPS = ("stop_compute", "archive_share", "final_backup", "drop_database", "scrub_share", "return_share", "remove_dns",
         "mark_decommissioned")
DECOMMISSION_FAILURES = [
    *[("failpoint", step) for step in STEPS],
    ("cluster failing", "stop_compute"), ("archive container forbidden", "archive_share"),
    ("archive upload failing", "archive_share"), ("database delete fails", "drop_database"),
    ("share being deleted", "scrub_share"), ("storage firewall failing", "scrub_share"), ("dns refused", "remove_dns"),
]


@pytest.mark.parametrize("case", DECOMMISSION_FAILURES, ids=[f"{k}-{s}" for k, s in DECOMMISSION_FAILURES])
def test_a_decommission_failing_at_each_step_stops_there_and_a_retry_finishes_leaving_only_the_archive(
    case, live, cloud, kube, run
):
    before, instance = live
    share = instance.share
    _break(case, cloud, kube, share)

    operation = run(instance_decommission, instance=instance, confirm_name="acme")

    assert operation.state == OperationState.FAILED
    assert f"stopped at {case[1]}" in operation.error or (
        case[0] == "failpoint" and f"stopped at {STEPS[STEPS.index(case[1]) + 1]}" in operation.error)
    instance.refresh_from_db()
    share.refresh_from_db()
    done = operation.done_step_names + ([case[1]] if case[0] == "failpoint" else [])  # failed after its work
    if "mark_decommissioned" not in done:
        assert instance.state == InstanceState.DECOMMISSIONING
    if "return_share" not in done:
        assert share.status in (ShareStatus.ASSIGNED, ShareStatus.ARCHIVING, ShareStatus.SCRUBBING)  # out of the pool
    # Whatever was made so far is recorded: at most one archive blob and one BACPAC, the hub's backups.
    archives = [key for key in cloud.blobs if key[:2] == ("cellsdeep", _container())]
    recorded = set(Backup.objects.filter(reason__in=[BackupReason.ARCHIVE, BackupReason.FINAL],
                                         state=BackupState.SUCCEEDED).values_list("location", flat=True))
    assert {f"https://cellsdeep.blob.core.windows.net/{c}/{b}" for _, c, b in archives} == recorded
    assert Operation.objects.filter(instance=instance, state__in=["queued", "running"]).count() == 0

    faults.disarm_all()
    cloud.failures.clear()
    cloud.lro_failures.clear()
    kube.refuse.clear()
    retried = run(instance_decommission, instance=instance, confirm_name="acme")
    assert retried.pk == operation.pk  # the same operation, resumed
    _assert_decommissioned(before, instance, Share.objects.get(pk=share.pk), retried, cloud, kube)


def test_a_decommission_keeps_what_the_other_instances_still_need(signup, cloud, kube, run):
    first, second = signup("acme"), signup("beta")
    rule = drivers.for_pool(first.database_pool)._firewall_rule_name(first.compute_pool_id)

    operation = run(instance_decommission, instance=first, confirm_name="acme")

    assert operation.state == OperationState.SUCCEEDED, operation.error
    # beta reaches its database and its share from the same cluster address: the rule and the address stay.
    assert f"{SERVER}/firewallRules/{rule}".lower() in cloud.resources
    assert sorted(ip_rules(cloud)) == sorted([HUB, EGRESS])
    assert drivers.for_dns(second.region).lookup(name="beta") is not None
    assert ("deployments", namespace(second), "beta") in kube.objects
    second.refresh_from_db()
    assert second.state == InstanceState.RUNNING

    run(instance_decommission, instance=second, confirm_name="beta")  # the last one: now they go
    assert f"{SERVER}/firewallRules/{rule}".lower() not in cloud.resources
    assert ip_rules(cloud) == [HUB]


def test_the_final_database_backup_outlives_the_dropped_database(live, cloud, run):
    _, instance = live
    operation = run(instance_decommission, instance=instance, confirm_name="acme")
    assert operation.state == OperationState.SUCCEEDED, operation.error
    final = Backup.objects.get(instance=instance, reason=BackupReason.FINAL)
    assert drivers.for_pool(final.pool).backup_checksum(location=final.location) == final.checksum


def _database_key(instance) -> str:
    return f"{SERVER}/databases/{drivers.for_pool(instance.database_pool).database_name(instance)}".lower()


def test_a_failed_export_stops_before_the_drop_leaves_no_blob_and_a_retry_finishes(live, cloud, kube, run):
    before, instance = live
    share = instance.share
    cloud.fail_lro("POST", r"/databases/[^/]+/export$")  # accepted, then the export ends Failed
    cloud.requests.clear()

    operation = run(instance_decommission, instance=instance, confirm_name="acme")

    assert operation.state == OperationState.FAILED
    assert "stopped at final_backup" in operation.error
    assert _database_key(instance) in cloud.resources  # not dropped
    assert cloud.calls("DELETE", r"/databases/") == []
    assert [key for key in cloud.blobs if key[2].endswith(".bacpac")] == []  # no stray export
    final = Backup.objects.get(instance=instance, reason=BackupReason.FINAL)
    assert final.state == BackupState.FAILED and final.location == ""
    assert PASSWORD not in f"{final.error} {operation.error}"

    retried = run(instance_decommission, instance=instance, confirm_name="acme")

    assert retried.pk == operation.pk
    assert len(cloud.calls("POST", r"/export$")) == 2
    _assert_decommissioned(before, instance, Share.objects.get(pk=share.pk), retried, cloud, kube)


def test_without_an_archive_account_the_final_backup_is_refused_before_anything_is_dropped(live, cloud, kube, run):
    before, instance = live
    share = instance.share
    pool = instance.database_pool
    pool.config = {key: value for key, value in pool.config.items() if key != "archive_account"}
    pool.save(update_fields=["config"])
    cloud.requests.clear()

    operation = run(instance_decommission, instance=instance, confirm_name="acme")

    assert operation.state == OperationState.FAILED
    assert "stopped at final_backup" in operation.error
    final = Backup.objects.get(instance=instance, reason=BackupReason.FINAL)
    assert final.state == BackupState.FAILED and "archive_account" in final.error
    assert _database_key(instance) in cloud.resources  # not dropped, and no restore point taken in its place
    assert cloud.calls("DELETE", r"/databases/") == [] and cloud.calls("POST", r"/export$") == []
    assert cloud.calls("PUT", r"/backupShortTermRetentionPolicies/") == []
    assert [key for key in cloud.blobs if key[2].endswith(".bacpac")] == []

    pool.config = {**pool.config, "archive_account": "cellsdeep"}  # staff configure it, then retry
    pool.save(update_fields=["config"])
    retried = run(instance_decommission, instance=instance, confirm_name="acme")
    assert retried.pk == operation.pk
    _assert_decommissioned(before, instance, Share.objects.get(pk=share.pk), retried, cloud, kube)


def test_an_export_that_outlasts_its_wait_is_retried_and_the_retry_finds_the_blob(live, cloud):
    """Driver level: one attempt waits ``export_wait_seconds``, then is transient; the export goes on in Azure and the
    next attempt uses its blob instead of exporting again. Retention deletes the blob."""
    _, instance = live
    pool = instance.database_pool
    pool.config = {**pool.config, "export_wait_seconds": 0.05}
    pool.save(update_fields=["config"])
    driver = drivers.for_pool(pool)
    cloud.hold_exports = True
    cloud.requests.clear()

    with pytest.raises(TransientDriverError, match="still running"):
        driver.backup_database(instance=instance, label="last", archive=True)
    assert [key for key in cloud.blobs if key[2].endswith(".bacpac")] == []

    cloud.hold_exports = False  # Azure finishes the export meanwhile (the poller still watches it)
    key = ("cellsdeep", _container(), "last.bacpac")
    for _ in range(500):
        if key in cloud.blobs:
            break
        time.sleep(0.01)
    result = drivers.for_pool(pool).backup_database(instance=instance, label="last", archive=True)

    assert len(cloud.calls("POST", r"/export$")) == 1  # found, not exported again
    assert result.location == f"https://cellsdeep.blob.core.windows.net/{_container()}/last.bacpac"
    assert result.checksum == hashlib.sha256(cloud.blobs[key]["data"]).hexdigest()
    assert driver.backup_checksum(location=result.location) == result.checksum
    # An ordinary backup is still a restore point (no export).
    point = driver.backup_database(instance=instance, label="nightly")
    assert point.location.startswith(f"{SERVER}/databases/") and len(cloud.calls("POST", r"/export$")) == 1

    driver.delete_backup(location=result.location)
    assert key not in cloud.blobs
    driver.delete_backup(location=result.location)  # absent is fine
    with pytest.raises(PermanentDriverError, match="no longer exists"):
        driver.backup_checksum(location=result.location)
    with pytest.raises(PermanentDriverError, match="archive container"):
        driver.delete_backup(location="https://elsewhere.blob.core.windows.net/x/y.bacpac")
