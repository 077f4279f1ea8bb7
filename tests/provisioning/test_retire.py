"""Retiring a pool: staff retire a draining or failed pool that nothing uses, and everything the hub made for it is
deleted — on the local runtime, what is deleted is real: the SQLite pool's folder, the share folders, the compute
pool's folder and supervisord programs, a managed PostgreSQL cluster (its server stops answering).

Refusals come before any work and name the current state (and the instances still on the pool); a failure injected at
each step (failpoints) leaves the pool in the state it was in, and a retry finishes the job.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from cells.choices import OperationKind, OperationState, PoolKind, PoolStatus, Provider, ShareStatus
from cells.errors import IllegalTransition, OperationInProgress, Refused
from cells.models import AuditEvent, Operation, Pool, Share
from provisioning import drivers, faults
from provisioning.backups import instance_decommission, share_scrub
from provisioning.capacity import pool_activate, pool_drain, pool_mark_failed, pool_retire, reef_top_up
from provisioning.drivers import postgres_cluster
from provisioning.drivers.local_supervisor import Supervisor
from tests.factories import make_cell, make_instance, make_pool, make_reef, make_region, make_user
from tests.provisioning import test_backups as shared
from tests.provisioning.test_backups import finished, signup

pytestmark = pytest.mark.django_db
run, backup_key = shared.run, shared.backup_key  # fixtures (backup_key is autouse: decommissions archive)


def var(*parts) -> Path:
    """A path under the test's var directory, without creating it (``var_path`` would)."""
    return Path(settings.CELLHUB["VAR_DIR"]).joinpath(*parts)


def folders(cell) -> dict[str, Path]:
    return {
        "database": var("databases", f"pool{cell['database'].pk}"),
        "storage": var("storage", f"pool{cell['storage'].pk}"),
        "compute": var("compute", f"pool{cell['compute'].pk}"),
    }


def retire(run, pool, **kwargs) -> Operation:
    return finished(run(pool_retire, pool=pool, **kwargs))


def status(pool) -> str:
    return Pool.objects.values_list("status", flat=True).get(pk=pool.pk)


# -- the local runtime: what the hub made is really gone ------------------------------------------------------------


def test_retiring_the_local_pools_of_a_decommissioned_instance_deletes_their_folders_and_programs(run, staff_user):
    cell = make_cell(capacity=2)
    instance = signup(run, cell, name="acme")
    compute = drivers.for_pool(cell["compute"])
    namespace = compute.namespace(instance)
    spec = compute.read_spec(instance)
    paths = folders(cell)
    assert all(path.is_dir() for path in paths.values())
    database_file = paths["database"] / f"{drivers.for_pool(cell['database']).database_name(instance)}.sqlite3"
    assert database_file.is_file()
    for pool in (cell["database"], cell["storage"], cell["compute"]):
        pool_drain(pool=pool)

    # While the instance uses them, each pool is refused before any work, naming it and the pool's state.
    for pool in (cell["database"], cell["storage"], cell["compute"]):
        with pytest.raises(Refused) as refused:
            pool_retire(pool=pool, requested_by=staff_user)
        assert refused.value.current_state == "draining"
        assert refused.value.extra["instances"] == ["acme"] and refused.value.extra["instance_count"] == 1
        assert "acme" in refused.value.message
    assert not Operation.objects.filter(kind=OperationKind.RETIRE).exists()
    assert database_file.is_file() and Supervisor.default().program_file(namespace).exists()

    operation = finished(run(instance_decommission, instance=instance, confirm_name="acme"))
    assert operation.state == OperationState.SUCCEEDED, operation.error
    # A late side effect of an abandoned step (what the reconciler would list): the program written again, stopped,
    # and a file left in the database pool's folder. Retiring deletes those too.
    compute.deploy(spec=dataclasses.replace(spec, replicas=0))
    assert Supervisor.default().program_file(namespace).exists()
    (paths["database"] / "leftover.sqlite3").write_bytes(b"")

    for pool in (cell["database"], cell["storage"], cell["compute"]):
        operation = retire(run, pool, requested_by=staff_user)
        assert operation.state == OperationState.SUCCEEDED, operation.error
        assert operation.done_step_names == ["shares", "alarms", "pool"]
        assert status(pool) == PoolStatus.RETIRED
        assert paths[pool.kind].exists() is False, paths[pool.kind]
        event = AuditEvent.objects.get(action="pool.retire", target_id=str(pool.pk))
        assert event.actor_id == staff_user.pk and event.details["operation"] == operation.pk
    assert not Supervisor.default().program_file(namespace).exists()
    assert Supervisor.default().info(namespace) is None
    assert set(Share.objects.filter(pool=cell["storage"]).values_list("status", flat=True)) == {ShareStatus.RETIRED}
    # Retired for good: no state change leaves it, and retiring it again is refused with its state.
    with pytest.raises(IllegalTransition) as again:
        pool_retire(pool=cell["database"])
    assert again.value.current_state == "retired"


@pytest.fixture
def reachable_var_dir(settings):
    """A var directory the postgres OS user can reach (managed clusters run as that user); removed afterwards."""
    var_dir = Path(tempfile.mkdtemp(prefix="cellhub-retire-", dir="/tmp"))
    var_dir.chmod(0o711)
    settings.CELLHUB = {**settings.CELLHUB, "VAR_DIR": var_dir}
    yield var_dir
    shutil.rmtree(var_dir, ignore_errors=True)


def test_retiring_a_managed_postgres_pool_made_by_a_top_up_removes_its_cluster(
        reachable_var_dir, run, django_capture_on_commit_callbacks):
    reef = make_reef(make_region(cloud="local"), capacity_overrides={
        "FLOOR": {"database": 5, "storage": 0, "compute": 0}})
    make_pool(reef, PoolKind.DATABASE, provider=Provider.POSTGRES, capacity=1, config={"managed": True})
    with django_capture_on_commit_callbacks(execute=True):
        (top_up,) = reef_top_up(reef=reef)
    pool = Pool.objects.get(pk=top_up.pool_id)
    try:
        assert finished(top_up).state == OperationState.SUCCEEDED, top_up.error
        connect = drivers.for_pool(pool)._connect_kwargs()
        with psycopg.connect(**connect) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
        folder = postgres_cluster.root() / f"pool{pool.pk}"
        assert folder.is_dir()

        pool_drain(pool=pool)
        operation = retire(run, pool)

        assert operation.state == OperationState.SUCCEEDED, operation.error
        assert status(pool) == PoolStatus.RETIRED
        assert not folder.exists()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**connect)
        ports = postgres_cluster.root() / "ports"
        assert not ports.is_dir() or all(p.read_text().strip() != f"pool{pool.pk}" for p in ports.iterdir())
    finally:
        drivers.for_pool(Pool.objects.get(pk=pool.pk)).delete_pool()


# -- refusals -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [PoolStatus.AVAILABLE, PoolStatus.PROVISIONING])
def test_a_pool_neither_draining_nor_failed_is_refused_naming_its_state(run, state):
    pool = make_pool(kind=PoolKind.STORAGE, status=state)
    folder = drivers.for_pool(pool)._root()
    with pytest.raises(IllegalTransition) as refused:
        pool_retire(pool=pool)
    assert refused.value.current_state == state and state in refused.value.message
    assert status(pool) == state and folder.is_dir()
    assert not Operation.objects.filter(kind=OperationKind.RETIRE).exists()


def test_the_refusal_names_the_first_instances_and_how_many_use_the_pool(db):
    cell = make_cell(capacity=10)
    for n in range(7):
        make_instance(name=f"user-{n}", reef=cell["reef"], database_pool=cell["database"], state="running")
    make_instance(name="gone", reef=cell["reef"], database_pool=cell["database"], state="decommissioned")
    pool_mark_failed(pool=cell["database"], reason="server lost")

    with pytest.raises(Refused) as refused:
        pool_retire(pool=cell["database"])

    assert refused.value.current_state == "failed" and refused.value.code == "refused"
    assert refused.value.extra["instances"] == [f"user-{n}" for n in range(5)]
    assert refused.value.extra["instance_count"] == 7
    assert "user-0, user-1, user-2, user-3, user-4 and 2 more" in refused.value.message
    assert "gone" not in refused.value.message  # a decommissioned instance holds nothing of the pool


def test_a_storage_pool_with_an_assigned_or_busy_share_is_refused(db):
    cell = make_cell(capacity=3)
    instance = make_instance(name="holder", reef=cell["reef"], state="running")
    first, second, _ = cell["storage"].shares.order_by("slot")
    Share.objects.filter(pk=first.pk).update(status=ShareStatus.ASSIGNED, instance=instance)
    Share.objects.filter(pk=second.pk).update(status=ShareStatus.SCRUBBING)
    pool_drain(pool=cell["storage"])

    with pytest.raises(Refused) as refused:
        pool_retire(pool=cell["storage"])

    assert refused.value.extra["instances"] == ["holder"]
    assert refused.value.extra["shares"] == [f"{second.name} (scrubbing)"]
    assert not Operation.objects.filter(kind=OperationKind.RETIRE).exists()


def test_a_retire_excludes_top_ups_replaces_and_scrubs_of_its_pool(run, django_capture_on_commit_callbacks):
    cell = make_cell(capacity=2)
    storage = cell["storage"]
    failed_share = storage.shares.order_by("slot").first()
    Share.objects.filter(pk=failed_share.pk).update(status=ShareStatus.FAILED)
    pool_mark_failed(pool=storage, reason="host lost")
    # A scrub of one of its shares under way: the retirement must wait.
    scrub = share_scrub(share=failed_share)
    with pytest.raises(OperationInProgress) as refused:
        pool_retire(pool=storage)
    assert refused.value.extra["operation"] == scrub.pk
    Operation.objects.filter(pk=scrub.pk).update(state=OperationState.CANCELLED)

    queued = pool_retire(pool=storage)  # not run: it stays queued
    assert queued.state == OperationState.QUEUED
    assert pool_retire(pool=storage).pk == queued.pk  # idempotent
    with pytest.raises(OperationInProgress):
        share_scrub(share=failed_share)
    from provisioning.operations import operation_create

    for kind in (OperationKind.TOP_UP, OperationKind.REPLACE):
        with pytest.raises(OperationInProgress):
            operation_create(kind=kind, pool=storage)
    # Draining meanwhile (staff changed their mind about the failure): it is not made available while it retires.
    Pool.objects.filter(pk=storage.pk).update(status=PoolStatus.DRAINING)
    with pytest.raises(Refused, match="being retired"):
        pool_activate(pool=storage)


# -- failures: the pool stays as it was, a retry finishes -----------------------------------------------------------


@pytest.mark.parametrize("point", [
    "retire.shares.before", "retire.shares.after", "retire.alarms.after", "retire.pool.before", "retire.pool.after",
])
@pytest.mark.parametrize("previous", [PoolStatus.DRAINING, PoolStatus.FAILED])
def test_a_failure_at_any_step_leaves_the_pool_as_it_was_and_a_retry_completes(run, point, previous):
    cell = make_cell(capacity=3)
    storage = cell["storage"]
    storage_driver = drivers.for_pool(storage)
    for share in storage.shares.all():
        Share.objects.filter(pk=share.pk).update(endpoint=storage_driver.create_share(share=share))
    (storage_driver.share_path(storage.shares.first()) / "left.txt").write_text("nobody's")
    Share.objects.filter(pk=storage.shares.order_by("slot").first().pk).update(status=ShareStatus.FAILED)
    if previous == PoolStatus.DRAINING:
        pool_drain(pool=storage)
    else:
        pool_mark_failed(pool=storage, reason="host lost")
    root = storage_driver._root()
    faults.arm(point, "permanent")

    failed = retire(run, storage)

    assert failed.state == OperationState.FAILED
    assert f"stays {previous}" in failed.error and "retry" in failed.error
    assert status(storage) == previous
    if point == "retire.shares.before":
        assert root.is_dir() and len(list(root.iterdir())) >= 3  # nothing deleted
        assert not storage.shares.filter(status=ShareStatus.RETIRED).exists()
    if previous == PoolStatus.DRAINING and point != "retire.shares.before":
        # Something may be deleted: the pool is not put back in service with half its resources.
        with pytest.raises(Refused, match="being retired"):
            pool_activate(pool=storage)

    retried = retire(run, storage)

    assert retried.pk == failed.pk and retried.state == OperationState.SUCCEEDED, retried.error
    assert status(storage) == PoolStatus.RETIRED
    assert not root.exists()
    assert set(storage.shares.values_list("status", flat=True)) == {ShareStatus.RETIRED}


def test_retiring_a_pool_whose_resources_are_gone_already_succeeds(run):
    """Absent is fine: every local driver's ``delete_pool`` (and ``delete_share``) finds nothing and says so."""
    cell = make_cell(capacity=2)
    for pool in (cell["database"], cell["storage"], cell["compute"]):
        pool_drain(pool=pool)
        for path in folders(cell).values():
            shutil.rmtree(path, ignore_errors=True)
        operation = retire(run, pool, requested_by=make_user(is_staff=True))
        assert operation.state == OperationState.SUCCEEDED, operation.error
        assert status(pool) == PoolStatus.RETIRED
