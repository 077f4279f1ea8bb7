"""Azure Files backups through the real data-plane SDKs against ``AzureCloud``: share snapshots made, restored
file by file and deleted by retention; the decommission archive uploaded (rewound on a retry) at the Archive tier,
checked against its SHA-256 and rehydrated before a restore; the pod's mount credentials from ``listKeys``."""
from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from cells.choices import PoolKind
from provisioning.drivers import manifests
from provisioning.drivers.azure_files import AzureFilesStorageDriver
from provisioning.drivers.base import DeploymentSpec, PermanentDriverError, TransientDriverError, resource_prefix
from tests.factories import make_pool, make_reef, make_region
from tests.provisioning.drivers.azure_cloud import AzureCloud
from tests.provisioning.drivers.azure_transport import FakeCredential

SUB = "00000000-0000-0000-0000-000000000001"
CONFIG = {"subscription_id": SUB, "resource_group": "rg-cells", "account_name": "cellswest1",
          "archive_account": "cellsdeep", "hub_address": "203.0.113.10"}


@pytest.fixture(autouse=True)
def _no_backoff(settings):
    settings.CELLHUB = {**settings.CELLHUB, "CLOUD_BACKOFF": 0}


@pytest.fixture
def cloud():
    return AzureCloud()


@pytest.fixture
def driver(db, cloud):
    reef = make_reef(make_region(cloud="azure", location="westus2"))
    pool = make_pool(reef, PoolKind.STORAGE, provider="azure_files", capacity=2, config=CONFIG)
    driver = AzureFilesStorageDriver(pool, credential=FakeCredential(), transport=cloud, polling_interval=0)
    share = pool.shares.get(slot=0)
    driver.create_share(share=share)
    cloud.files[("cellswest1", share.name)].update({"a.txt": b"alpha", "docs/": b"", "docs/b.txt": b"bravo"})
    return driver


def _live(cloud, share):
    return {k: v for k, v in cloud.files[("cellswest1", share.name)].items()}


def test_a_snapshot_restores_the_share_file_by_file_and_retention_deletes_it(driver, cloud):
    share = driver.pool.shares.get(slot=0)
    backup = driver.backup_share(share=share, label="b1")
    assert backup.location.startswith(f"https://cellswest1.file.core.windows.net/{share.name}?sharesnapshot=")
    (put,) = [r for r in cloud.calls("PUT") if r.query.get("$expand") == ["snapshots"]]
    assert put.path.endswith(f"/fileServices/default/shares/{share.name}")
    assert put.body == {"properties": {"metadata": {"cellhublabel": "b1"}}}
    # The same label finds the same snapshot: no second one.
    assert driver.backup_share(share=share, label="b1").location == backup.location
    assert len(cloud.snapshots) == 1

    files = cloud.files[("cellswest1", share.name)]
    files["a.txt"] = b"overwritten"
    files["new.txt"] = b"added later"
    del files["docs/b.txt"]

    driver.restore_share(share=share, location=backup.location)

    assert _live(cloud, share) == {"a.txt": b"alpha", "docs/": b"", "docs/b.txt": b"bravo"}

    driver.delete_backup(location=backup.location)
    assert cloud.snapshots == {}
    driver.delete_backup(location=backup.location)  # absent is fine
    with pytest.raises(PermanentDriverError, match="no longer exists"):
        driver.restore_share(share=share, location=backup.location)


def test_the_archive_upload_is_rewound_on_a_retry_and_restored_only_whole_after_rehydration(driver, cloud):
    share = driver.pool.shares.get(slot=0)
    container = f"{resource_prefix()}-archive"
    cloud.fail("PUT", rf"/{container}/{share.name}/final.zip$")  # the first upload attempt fails (HTTP 500)

    result = driver.backup_share(share=share, label="final", archive=True)

    blob = cloud.blobs[("cellsdeep", container, f"{share.name}/final.zip")]
    assert blob["tier"] == "Archive"
    assert len(blob["data"]) == result.size_bytes > 0  # the retry sent every byte, not an empty rest
    assert hashlib.sha256(blob["data"]).hexdigest() == result.checksum == blob["metadata"]["sha256"]
    with zipfile.ZipFile(io.BytesIO(blob["data"])) as archive:
        assert {name: archive.read(name) for name in archive.namelist()} == {"a.txt": b"alpha",
                                                                            "docs/b.txt": b"bravo"}

    cloud.files[("cellswest1", share.name)].clear()
    with pytest.raises(TransientDriverError, match="rehydrated"):
        driver.restore_share(share=share, location=result.location)
    tier = [r for r in cloud.requests if r.query.get("comp") == ["tier"]]
    assert len(tier) == 1  # rehydration asked for once
    assert _live(cloud, share) == {}

    driver.delete_backup(location=result.location)
    assert ("cellsdeep", container, f"{share.name}/final.zip") not in cloud.blobs


def cloud_archive(share) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", b"alpha")
        archive.writestr("docs/b.txt", b"bravo")
    return buffer.getvalue()


def test_mount_credentials_come_from_list_keys_into_the_storage_secret(driver, cloud):
    share = driver.pool.shares.get(slot=0)
    credentials = driver.mount_credentials(share=share)
    assert credentials == {"azurestorageaccountname": "cellswest1", "azurestorageaccountkey": "key-of-cellswest1=="}
    (post,) = cloud.calls("POST")
    assert post.path.endswith("/storageAccounts/cellswest1/listKeys")
    spec = DeploymentSpec(name="acme", namespace="ns", image="img", version="1", cpu_millicores=100, memory_mib=128,
                          hostname="acme.example", database_url="mssql://x", share_endpoint=driver.endpoint(share),
                          share_name=share.name, share_credentials=credentials)
    rendered = manifests.render(spec)
    secret = next(m for m in rendered if m["kind"] == "Secret" and m["metadata"]["name"] == "acme-storage")
    assert secret["stringData"] == credentials and secret["metadata"]["namespace"] == "ns"
    deployment = next(m for m in rendered if m["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["volumes"][0]["azureFile"]["secretName"] == "acme-storage"
