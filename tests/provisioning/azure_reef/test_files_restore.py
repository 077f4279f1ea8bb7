"""A files restore on an Azure reef: a share snapshot taken by a files backup is restored into the live share file by
file through the Azure Files data plane (the data really comes back), after a safeguard snapshot of what it held; a
failure at each step leaves the instance running on a share that a retry restores, with no snapshot the hub does
not know of."""
from __future__ import annotations

import pytest

from cells.choices import InstanceState, OperationState
from provisioning import faults
from provisioning.backups import instance_backup, instance_restore_files
from provisioning.models import Backup, BackupKind, BackupState, Restore, RestoreState
from provisioning.operations import operation_retry
from tests.provisioning.azure_reef.conftest import ACCOUNT, STORAGE_API

pytestmark = pytest.mark.django_db

BACKED_UP = {"notes/": b"", "notes/2026/": b"", "notes/2026/march.txt": b"first quarter figures",
             "logo.png": bytes(range(256)) * 4}


def _content(files: dict) -> dict:
    return {path: data for path, data in files.items() if not path.startswith("_")}


def _snapshots_known_to_the_hub(cloud, share) -> bool:
    """Every snapshot Azure holds of the share is a succeeded backup of the hub (none leaked), and every such backup
    still has its snapshot."""
    in_azure = {stamp for account, name, stamp in cloud.snapshots if (account, name) == ("cellswest1", share.name)}
    recorded = set(Backup.objects.filter(kind=BackupKind.FILES, state=BackupState.SUCCEEDED).values_list(
        "checksum", flat=True))
    return in_azure == recorded


@pytest.fixture
def backed_up(signup, cloud, run):
    """A running instance whose share held ``BACKED_UP`` when a files backup was taken, and holds other files now."""
    instance = signup("acme")
    share = instance.share
    live = cloud.files[("cellswest1", share.name)]
    live.update(BACKED_UP)
    operation = run(instance_backup, instance=instance, kind=BackupKind.FILES)
    assert operation.state == OperationState.SUCCEEDED, operation.error
    backup = Backup.objects.get(operation=operation, kind=BackupKind.FILES)
    # Then the customer changed things: a file rewritten, one deleted, new files and folders.
    live["notes/2026/march.txt"] = b"overwritten by mistake"
    del live["logo.png"]
    live.update({"scratch/": b"", "scratch/tmp.bin": b"\x00" * 10, "new.txt": b"new"})
    return instance, share, backup


def test_a_files_backup_is_a_snapshot_and_its_restore_brings_the_data_back_through_the_data_plane(
    backed_up, cloud, run
):
    instance, share, backup = backed_up
    snapshot = cloud.calls("PUT", rf"/fileServices/default/shares/{share.name}$")[-1]
    assert snapshot.path == f"{ACCOUNT}/fileServices/default/shares/{share.name}"
    assert snapshot.query["$expand"] == ["snapshots"] and snapshot.query["api-version"] == [STORAGE_API]
    assert snapshot.body == {"properties": {"metadata": {"cellhublabel": backup.details["label"]}}}
    stamp = backup.checksum
    assert backup.location == f"https://cellswest1.file.core.windows.net/{share.name}?sharesnapshot={stamp}"
    assert _content(cloud.snapshots[("cellswest1", share.name, stamp)]) == BACKED_UP
    changed = _content(cloud.files[("cellswest1", share.name)])
    cloud.requests.clear()

    operation = run(instance_restore_files, instance=instance, backup=backup)

    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert _content(cloud.files[("cellswest1", share.name)]) == BACKED_UP  # byte for byte, folders included
    restore = Restore.objects.get(operation=operation)
    assert restore.state == RestoreState.SUCCEEDED
    safeguard = restore.safeguard
    assert safeguard.state == BackupState.SUCCEEDED and safeguard.checksum != stamp
    assert _content(cloud.snapshots[("cellswest1", share.name, safeguard.checksum)]) == changed  # what it held
    assert _snapshots_known_to_the_hub(cloud, share)
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING

    # At the wire: the snapshot checked through ARM, its files read from the snapshot, written to the live share.
    check = cloud.calls("GET", rf"/shares/{share.name}$")[0]
    assert check.query["api-version"] == [STORAGE_API]
    data = [call for call in cloud.requests if ".file.core.windows.net" in call.url]
    assert data and all(call.headers.get("x-ms-file-request-intent") == "backup" for call in data)  # OAuth access
    assert all(call.headers.get("x-ms-version") for call in data)
    reads = {call.path for call in data if call.method == "GET" and call.query.get("sharesnapshot") == [stamp]
             and "comp" not in call.query}
    assert reads == {f"/{share.name}/notes/2026/march.txt", f"/{share.name}/logo.png"}
    written = [call for call in data if call.method == "PUT" and call.query.get("comp") == ["range"]]
    assert {call.path for call in written} == reads
    assert not [call for call in data if call.method != "GET" and call.query.get("sharesnapshot")]  # read-only
    deleted = [call.path for call in data if call.method == "DELETE"]
    assert sorted(deleted) == [f"/{share.name}/new.txt", f"/{share.name}/scratch", f"/{share.name}/scratch/tmp.bin"]
    assert deleted[-1] == f"/{share.name}/scratch"  # a folder once empty


def _break(case, cloud, share):
    kind, detail = case
    if kind == "failpoint":
        faults.arm(f"restore.{detail}.after", "permanent")
    elif kind == "safeguard snapshot refused":
        cloud.fail("PUT", rf"/fileServices/default/shares/{share.name}$", status=409, code="ShareSnapshotCountExceeded")
    elif kind == "snapshot unreadable":
        cloud.fail("GET", rf"/{share.name}/logo.png$", times=1000)  # HTTP 500 from the data plane
    elif kind == "share unwritable":
        cloud.fail("PUT", rf"/{share.name}/notes/2026/march.txt$", status=403, code="AuthorizationPermissionMismatch")


RESTORE_FAILURES = [
    *[("failpoint", step) for step in ("verify", "safeguard", "restore", "activate")],
    ("safeguard snapshot refused", "safeguard"), ("snapshot unreadable", "restore"), ("share unwritable", "restore"),
]


@pytest.mark.parametrize("case", RESTORE_FAILURES, ids=[f"{kind}-{step}" for kind, step in RESTORE_FAILURES])
def test_a_files_restore_failing_at_each_step_leaves_no_stray_snapshot_and_a_retry_restores(
    case, backed_up, cloud, run
):
    instance, share, backup = backed_up
    _break(case, cloud, share)
    operation = run(instance_restore_files, instance=instance, backup=backup)

    assert operation.state == OperationState.FAILED
    assert operation.steps == []  # a retry starts over from verify
    restore = Restore.objects.get(operation=operation)
    assert restore.state == RestoreState.FAILED
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    assert _snapshots_known_to_the_hub(cloud, share)
    if restore.safeguard_id:
        assert f"files backup #{restore.safeguard_id} holds what it had" in operation.error
    if case[1] in ("verify", "safeguard"):  # nothing was written before the safeguard existed
        assert "scratch/tmp.bin" in cloud.files[("cellswest1", share.name)]

    faults.disarm_all()
    cloud.failures.clear()
    retried = run(operation_retry, operation=operation)
    assert retried.state == OperationState.SUCCEEDED, retried.error
    assert _content(cloud.files[("cellswest1", share.name)]) == BACKED_UP
    restore.refresh_from_db()
    assert restore.state == RestoreState.SUCCEEDED
    assert _snapshots_known_to_the_hub(cloud, share)  # the retry reused its safeguard: no second snapshot
    assert Backup.objects.filter(operation=operation).count() == 1


def test_a_backup_whose_snapshot_is_gone_is_refused_before_the_share_is_touched(backed_up, cloud, run):
    instance, share, backup = backed_up
    del cloud.snapshots[("cellswest1", share.name, backup.checksum)]  # deleted in the portal, say
    before = _content(cloud.files[("cellswest1", share.name)])

    operation = run(instance_restore_files, instance=instance, backup=backup)

    assert operation.state == OperationState.FAILED
    assert "no longer exists" in operation.error
    assert _content(cloud.files[("cellswest1", share.name)]) == before
    assert Restore.objects.get(operation=operation).safeguard is None
    assert not [call for call in cloud.requests if call.method == "PUT" and ".file.core." in call.url]
