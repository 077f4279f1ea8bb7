"""A failed storage pool is replaced on the local drivers: a new pool folder takes over every share folder, share by
share, with every file; instances are redeployed on the new endpoints; a crash resumes; refusals name states."""
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from cells.choices import InstanceState, OperationKind, OperationState, PoolKind, PoolStatus, ShareStatus
from cells.errors import IllegalTransition, Refused
from cells.models import Operation, Pool, Share
from provisioning import drivers, faults
from provisioning.capacity import pool_mark_failed, pool_replace
from provisioning.lifecycle import instance_signup
from tests.factories import make_cell, make_pool, make_user

pytestmark = pytest.mark.django_db
FILES = {"config/server.json": b'{"name": "acme"}', "logs/2026/11/22.log": b"line\n" * 5000, "empty.txt": b""}


@pytest.fixture
def running(sync_tasks, django_capture_on_commit_callbacks):
    """Two running instances on a storage pool of 10 shares, with files written in their shares."""
    cell = make_cell(capacity=10)
    instances = []
    for name in ("acme", "globex"):
        with django_capture_on_commit_callbacks(execute=True):
            operation = instance_signup(name=name, region=cell["reef"].region, owner=make_user())
        operation.refresh_from_db()
        assert operation.state == OperationState.SUCCEEDED, operation.error
        instances.append(operation.instance)
    storage = drivers.for_pool(cell["storage"])
    for share in cell["storage"].shares.filter(endpoint=""):  # as a top-up makes them: every share has its folder
        Share.objects.filter(pk=share.pk).update(endpoint=storage.create_share(share=share))
    for instance in instances:
        root = storage.share_path(instance.share)
        for relative, content in FILES.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(content + instance.name.encode())
    return {**cell, "instances": instances}


def read_back(share: Share) -> dict[str, bytes]:
    """Every file of the share, read through its endpoint."""
    root = Path(urlparse(share.endpoint).path)
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def replace(pool, capture, **kwargs):
    with capture(execute=True):
        operation = pool_replace(pool=pool, **kwargs)
    operation.refresh_from_db()
    return operation


def test_replace_keeps_every_file_and_every_share_row(running, django_capture_on_commit_callbacks):
    old = running["storage"]
    before = {share.pk: (share.slot, share.name, share.instance_id, share.status, share.firewall_address)
              for share in old.shares.all()}
    affected = pool_mark_failed(pool=old, reason="gateway does not answer", requested_by=make_user(username="sam"))
    assert sorted(i.name for i in affected) == ["acme", "globex"]
    old.refresh_from_db()
    assert old.status == PoolStatus.FAILED and "gateway does not answer — sam" in old.status_reason

    operation = replace(old, django_capture_on_commit_callbacks)

    assert operation.kind == OperationKind.REPLACE and operation.state == OperationState.SUCCEEDED, operation.error
    assert [step["name"] for step in operation.steps] == ["host", "shares", "instances"]
    old.refresh_from_db()
    new = Pool.objects.get(pk=operation.params["new_pool_id"])
    assert (old.status, new.status) == (PoolStatus.RETIRED, PoolStatus.AVAILABLE)
    assert (new.replaces, new.reef, new.kind, new.provider, new.capacity) == (old, old.reef, "storage", "local_fs", 10)
    assert new.name == f"{old.name}-r1" and f"replaced by {new}" in old.status_reason
    assert sorted(operation.params["moved"]) == sorted(share.name for share in new.shares.all())
    assert old.shares.count() == 0
    after = {share.pk: (share.slot, share.name, share.instance_id, share.status, share.firewall_address)
             for share in new.shares.all()}
    assert after == before  # the same rows: ids, slots, names, instances, states, firewall

    storage = drivers.for_pool(new)
    for instance in running["instances"]:
        share = Share.objects.get(instance=instance)
        assert share.endpoint == storage.share_path(share).as_uri()
        assert share.endpoint.startswith(Path(new.external_id).as_uri())
        assert read_back(share) == {relative: content + instance.name.encode() for relative, content in FILES.items()}
        assert storage.exports()[share.name] == share.firewall_address != ""
        assert share.name not in drivers.for_pool(old).exports()
        # The instance is redeployed on the new endpoint.
        manifests = drivers.for_pool(instance.compute_pool).manifest_path(instance).read_text()
        assert f"path: {urlparse(share.endpoint).path}" in manifests
    for share in new.shares.filter(status=ShareStatus.AVAILABLE):
        assert storage.share_exists(share=share)


def test_the_shares_of_a_replaced_pool_take_new_signups(running, django_capture_on_commit_callbacks):
    old = running["storage"]
    pool_mark_failed(pool=old, reason="disk lost")
    operation = replace(old, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        signup = instance_signup(name="initech", region=old.reef.region, owner=make_user())
    signup.refresh_from_db()
    assert signup.state == OperationState.SUCCEEDED, signup.error
    assert Share.objects.get(instance=signup.instance).pool_id == operation.params["new_pool_id"]


def test_a_stopped_instance_is_redeployed_stopped(running, django_capture_on_commit_callbacks):
    acme = running["instances"][0]
    type(acme).objects.filter(pk=acme.pk).update(state=InstanceState.STOPPED)
    pool_mark_failed(pool=running["storage"], reason="disk lost")
    replace(running["storage"], django_capture_on_commit_callbacks)
    documents = list(yaml.safe_load_all(drivers.for_pool(acme.compute_pool).manifest_path(acme).read_text()))
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 0
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["hostPath"]["path"] == urlparse(Share.objects.get(instance=acme).endpoint).path


def test_a_replace_interrupted_mid_shares_resumes_without_losing_a_file(running, django_capture_on_commit_callbacks):
    old = running["storage"]
    pool_mark_failed(pool=old, reason="disk lost")
    # A stray folder where slot 5's share must go stops the move half way: shares 0–4 moved, 5–9 not.
    stray_share = old.shares.get(slot=5)
    with django_capture_on_commit_callbacks(execute=True):
        operation = pool_replace(pool=old)
        new = Pool.objects.get(pk=operation.params["new_pool_id"])
        stray = Path(drivers.for_pool(new)._root()) / stray_share.name
        stray.mkdir(parents=True)
    operation.refresh_from_db()
    new.refresh_from_db()
    assert operation.state == OperationState.FAILED and "is in both" in operation.error
    assert "nothing deleted" in operation.error
    assert new.status == PoolStatus.FAILED and old.status == PoolStatus.FAILED
    moved_folders = sorted(p.name for p in Path(new.external_id).iterdir() if p.is_dir())
    assert len(moved_folders) == 6  # five moved shares and the stray folder

    stray.rmdir()
    again = replace(old, django_capture_on_commit_callbacks)  # the failed replace is retried
    assert again.pk == operation.pk and again.state == OperationState.SUCCEEDED, again.error
    assert new.shares.count() == 10 and Pool.objects.get(pk=new.pk).status == PoolStatus.AVAILABLE
    for instance in running["instances"]:
        share = Share.objects.get(instance=instance)
        assert read_back(share) == {relative: content + instance.name.encode() for relative, content in FILES.items()}


def test_a_fault_after_the_host_step_resumes_from_the_shares(running, django_capture_on_commit_callbacks):
    old = running["storage"]
    pool_mark_failed(pool=old, reason="disk lost")
    faults.arm("replace.shares.before", "permanent")
    operation = replace(old, django_capture_on_commit_callbacks)
    assert operation.state == OperationState.FAILED
    assert [step["name"] for step in operation.steps] == ["host"]
    assert old.shares.count() == 10  # nothing moved, nothing deleted
    again = replace(old, django_capture_on_commit_callbacks)
    assert again.state == OperationState.SUCCEEDED, again.error
    assert [step["name"] for step in again.steps] == ["host", "shares", "instances"]


def test_replace_refusals_name_the_state(running, django_capture_on_commit_callbacks):
    storage = running["storage"]
    with pytest.raises(Refused, match=f"pool {storage} is available; mark it failed before replacing it"):
        pool_replace(pool=storage)
    with pytest.raises(Refused, match="is a database pool"):
        pool_replace(pool=running["database"])
    with pytest.raises(Refused, match="say why"):
        pool_mark_failed(pool=storage, reason=" ")
    pool_mark_failed(pool=storage, reason="disk lost")
    with pytest.raises(IllegalTransition, match="is failed; it cannot become failed"):
        pool_mark_failed(pool=storage, reason="again")
    first = pool_replace(pool=storage)  # not run: no on_commit here
    assert pool_replace(pool=storage) == first  # the replace under way, not a second one
    assert Operation.objects.filter(kind=OperationKind.REPLACE).count() == 1
    assert Pool.objects.filter(replaces=storage).count() == 1


def test_a_provider_that_cannot_move_shares_is_refused_before_anything_is_made(running):
    pool = make_pool(running["reef"], PoolKind.STORAGE, capacity=3, provider="azure_files",
                     config={"subscription_id": "s", "resource_group": "g", "account_name": "a"})
    pool_mark_failed(pool=pool, reason="account deleted")
    with pytest.raises(Refused, match="cannot move its shares to another host"):
        pool_replace(pool=pool)
    assert not Pool.objects.filter(replaces=pool).exists()
