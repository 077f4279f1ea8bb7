"""The capacity pass on PostgreSQL and the local drivers: facts, orders, top-ups that end available (or failed
with nothing left behind), per-reef thresholds, concurrent passes, and the services staff and the API call."""
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from cells.choices import InstanceState, OperationKind, OperationState, PoolKind, PoolStatus, ReefStatus, ShareStatus
from cells.errors import IllegalTransition, Refused
from cells.models import Instance, Operation, Pool, Reef, Share
from cells.thresholds import thresholds_validate
from provisioning import drivers, faults, tasks
from provisioning.capacity import (
    capacity_top_up_pass,
    gather_facts,
    pool_activate,
    pool_drain,
    reef_activate,
    reef_capacity,
    reef_drain,
    reef_top_up,
)
from provisioning.operations import operation_retry
from tests.factories import make_cell, make_instance, make_pool, make_reef, make_region, make_user


def take_shares(pool, count):
    """``count`` of the pool's shares held by new running instances."""
    cell_reef = pool.reef
    for share in pool.shares.filter(status=ShareStatus.AVAILABLE).order_by("slot")[:count]:
        instance = make_instance(reef=cell_reef, state=InstanceState.RUNNING)
        Share.objects.filter(pk=share.pk).update(status=ShareStatus.ASSIGNED, instance=instance)


def low_on_storage(**reef_fields):
    """A reef whose storage pool has 2 free shares (floor 5): the pass must order one storage pool."""
    cell = make_cell(capacity=10, **reef_fields)
    take_shares(cell["storage"], 8)
    return cell


def facts_by_kind(reef):
    return {f.kind: f for f in gather_facts(reef_ids=[reef.pk])}


@pytest.mark.django_db
def test_facts_count_free_used_coming_and_signups():
    cell = make_cell(capacity=10)
    reef = cell["reef"]
    take_shares(cell["storage"], 3)  # 3 running instances, created now
    for _ in range(2):
        make_instance(reef=reef, database_pool=cell["database"], compute_pool=cell["compute"],
                      state=InstanceState.RUNNING)
    old = make_instance(reef=reef, database_pool=cell["database"], state=InstanceState.RUNNING)
    Instance.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))  # outside the window
    make_pool(reef, PoolKind.DATABASE, capacity=40, status=PoolStatus.PROVISIONING)  # coming
    make_pool(reef, PoolKind.DATABASE, capacity=7, dedicated=True)  # not for signups
    make_pool(reef, PoolKind.STORAGE, capacity=10, status=PoolStatus.DRAINING)  # its shares are not free

    facts = facts_by_kind(reef)
    database, storage, compute = facts["database"], facts["storage"], facts["compute"]
    assert (database.free, database.used, database.coming) == (7, 3, 40)
    assert (compute.free, compute.used, compute.coming) == (8, 2, 0)
    assert (storage.free, storage.used, storage.coming) == (7, 3, 0)
    assert database.instance_count == 6 and database.signups == 5
    assert (database.provider, storage.provider, compute.provider) == ("sqlite", "local_fs", "local_compute")
    assert database.reef == f"{reef.region.slug}/{reef.slug}"


@pytest.mark.django_db
def test_facts_read_the_slot_counters_not_the_fleet():
    """The planner's facts cost the same statements for 3 or 300 instances, and none of them counts instances held
    or shares: used and free slots come from the counters the database keeps; only the recent signups are read."""
    from django.test.utils import CaptureQueriesContext

    cell = make_cell(capacity=400)
    owner = make_user()

    def grow(count):
        start = Instance.objects.count()
        Instance.objects.bulk_create([
            Instance(name=f"held-{start + n}", owner=owner, region=cell["reef"].region, reef=cell["reef"],
                     database_pool=cell["database"], compute_pool=cell["compute"], server_version="1",
                     state=InstanceState.RUNNING, created_at=timezone.now() - timedelta(days=30))
            for n in range(count)
        ])
        Instance.objects.filter(name__startswith="held-").update(created_at=timezone.now() - timedelta(days=30))

    def read():
        with CaptureQueriesContext(connection) as queries:
            (facts,) = [f for f in gather_facts(reef_ids=[cell["reef"].pk]) if f.kind == PoolKind.DATABASE]
        return facts, [query["sql"] for query in queries.captured_queries]

    grow(3)
    small, small_sql = read()
    grow(297)
    big, big_sql = read()
    assert (small.used, big.used, big.instance_count, big.free) == (3, 300, 300, 100)
    assert len(small_sql) == len(big_sql)
    # Instances are read only as recent signups (a bounded created_at range) or one by its primary key (the
    # instance a dedicated reef holds, by name), shares never.
    for sql in big_sql:
        for read in sql.split('FROM "cells_instance"')[1:]:
            by_pk = read.startswith(' U0 WHERE U0."id" = ("cells_reef"."dedicated_to_id") LIMIT 1)')
            assert by_pk or '"cells_instance"."created_at" >=' in read, sql
    assert not any('FROM "cells_share"' in sql or 'JOIN "cells_share"' in sql for sql in big_sql)


@pytest.mark.django_db
def test_the_pass_provisions_a_storage_pool_with_ten_shares_that_becomes_available(
    sync_tasks, django_capture_on_commit_callbacks
):
    cell = low_on_storage()
    with django_capture_on_commit_callbacks(execute=True):
        started = tasks.capacity_top_up_pass()

    (operation,) = Operation.objects.filter(pk__in=started)
    assert operation.kind == OperationKind.TOP_UP and operation.state == OperationState.SUCCEEDED, operation.error
    pool = operation.pool
    assert (pool.reef, pool.kind, pool.provider, pool.capacity, pool.status) == (
        cell["reef"], "storage", "local_fs", 10, PoolStatus.AVAILABLE)
    assert pool.name == "storage-1" and pool.external_id
    shares = list(pool.shares.order_by("slot"))
    assert [s.slot for s in shares] == list(range(10))
    storage = drivers.for_pool(pool)
    for share in shares:
        assert share.status == ShareStatus.AVAILABLE and share.instance_id is None
        assert storage.share_exists(share=share)
        assert share.endpoint == storage.share_path(share).as_uri()
    assert facts_by_kind(cell["reef"])["storage"].free == 12
    # Enough now: the next pass orders nothing.
    with django_capture_on_commit_callbacks(execute=True):
        assert capacity_top_up_pass() == []
    assert Pool.objects.filter(reef=cell["reef"], kind=PoolKind.STORAGE).count() == 2


@pytest.mark.django_db
def test_the_pass_tops_up_database_and_compute_on_the_local_drivers(sync_tasks, django_capture_on_commit_callbacks):
    reef = make_reef(max_instances=1000)
    make_pool(reef, PoolKind.STORAGE, capacity=10)
    with django_capture_on_commit_callbacks(execute=True):
        started = capacity_top_up_pass()
    pools = {op.pool.kind: op.pool for op in Operation.objects.filter(pk__in=started).select_related("pool")}
    assert set(pools) == {"database", "compute"}
    assert (pools["database"].provider, pools["database"].capacity, pools["database"].status) == (
        "sqlite", 100, PoolStatus.AVAILABLE)
    assert (pools["compute"].provider, pools["compute"].capacity, pools["compute"].status) == (
        "local_compute", 100, PoolStatus.AVAILABLE)
    assert Path(pools["database"].external_id).is_dir() and Path(pools["compute"].external_id).is_dir()


@pytest.mark.django_db
def test_a_pool_being_provisioned_counts_as_coming_capacity():
    cell = low_on_storage()
    first = capacity_top_up_pass()  # no worker: the pool stays provisioning
    assert len(first) == 1
    assert Pool.objects.get(operations__pk=first[0]).status == PoolStatus.PROVISIONING
    assert facts_by_kind(cell["reef"])["storage"].coming == 10
    assert capacity_top_up_pass() == []
    assert Pool.objects.filter(reef=cell["reef"], kind=PoolKind.STORAGE).count() == 2
    assert Operation.objects.filter(kind=OperationKind.TOP_UP).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_passes_order_one_pool():
    """Both passes read the fleet and decide to order while a third connection holds the reef's lock; when it
    lets go, one pass orders and the other, planning again under the lock, sees the pool coming."""
    cell = low_on_storage()
    reef = cell["reef"]
    holding, release = threading.Event(), threading.Event()
    results, errors = [], []

    def hold_the_reef():
        try:
            with transaction.atomic():
                Reef.objects.select_for_update().get(pk=reef.pk)
                holding.set()
                release.wait(30)
        finally:
            connection.close()

    def one_pass():
        try:
            results.append(capacity_top_up_pass())
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_reef)
    holder.start()
    assert holding.wait(10)
    passes = [threading.Thread(target=one_pass) for _ in range(2)]
    for thread in passes:
        thread.start()
    # Both passes have planned an order and wait for the reef's lock.
    deadline = timezone.now() + timedelta(seconds=20)
    while _waiting_on_locks() < 2:
        assert timezone.now() < deadline, "the passes never waited on the reef's lock"
    release.set()
    for thread in [holder, *passes]:
        thread.join(30)

    assert errors == []
    assert sorted(len(started) for started in results) == [0, 1]
    assert Pool.objects.filter(reef=reef, kind=PoolKind.STORAGE, status=PoolStatus.PROVISIONING).count() == 1
    assert Operation.objects.filter(kind=OperationKind.TOP_UP).count() == 1


def _waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_a_failed_top_up_leaves_the_pool_failed_and_nothing_half_made_and_a_retry_works(
    sync_tasks, django_capture_on_commit_callbacks
):
    cell = low_on_storage()
    faults.arm("top_up.shares.after", "permanent")  # every share made, then the step fails
    with django_capture_on_commit_callbacks(execute=True):
        (operation_id,) = capacity_top_up_pass()

    operation = Operation.objects.get(pk=operation_id)
    pool = operation.pool
    assert operation.state == OperationState.FAILED and "injected permanent fault" in operation.error
    assert "everything the top-up made was deleted" in operation.error
    assert operation.steps == []
    assert pool.status == PoolStatus.FAILED and "top-up failed" in pool.status_reason
    assert pool.shares.count() == 0 and pool.external_id == ""
    root = Path(drivers.for_pool(pool)._root())  # the driver's folder would be recreated by var_path: look inside
    assert list(root.iterdir()) == []

    # The failure holds further orders for storage in this reef and is shown as a shortfall.
    assert capacity_top_up_pass() == []
    (shortfall,) = reef_capacity(reef=cell["reef"]).shortfalls
    assert shortfall.kind == "storage" and f"{pool.name} failed" in shortfall.reason

    with django_capture_on_commit_callbacks(execute=True):
        operation_retry(operation=operation)
    operation.refresh_from_db()
    pool.refresh_from_db()
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert pool.status == PoolStatus.AVAILABLE and pool.shares.filter(status=ShareStatus.AVAILABLE).count() == 10
    assert all(drivers.for_pool(pool).share_exists(share=share) for share in pool.shares.all())


@pytest.mark.django_db
def test_a_transient_fault_in_a_top_up_is_retried_in_place(sync_tasks, django_capture_on_commit_callbacks):
    low_on_storage()
    faults.arm("top_up.pool.before", "transient", times=2)
    with django_capture_on_commit_callbacks(execute=True):
        (operation_id,) = capacity_top_up_pass()
    operation = Operation.objects.get(pk=operation_id)
    assert operation.state == OperationState.SUCCEEDED and operation.pool.status == PoolStatus.AVAILABLE


@pytest.mark.django_db
def test_a_reef_override_changes_the_plan():
    cell = make_cell(capacity=10)
    assert capacity_top_up_pass() == []  # 10 free of each kind, floor 5: enough
    Reef.objects.filter(pk=cell["reef"].pk).update(
        capacity_overrides={"FLOOR": {"storage": 15}, "POOL_SIZE": {"local_fs": 20}}
    )
    (operation_id,) = capacity_top_up_pass()
    pool = Pool.objects.get(operations__pk=operation_id)
    assert (pool.kind, pool.capacity) == ("storage", 20)
    other = make_cell(capacity=10)
    assert facts_by_kind(other["reef"])["storage"].thresholds.floor == 5  # the override is that reef's only


@pytest.mark.django_db
def test_the_signup_rate_orders_ahead_of_the_floor(settings):
    cell = make_cell(capacity=20)
    for _ in range(6):  # 6 signups in the 48 h window: 0.125 an hour
        make_instance(reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"])
    facts = facts_by_kind(cell["reef"])
    assert (facts["database"].free, facts["database"].signups, facts["storage"].free) == (14, 6, 20)
    assert capacity_top_up_pass() == []  # 0.1 h lead + 24 h margin: 4 slots wanted, under the floor of 5
    settings.CELLHUB = {**settings.CELLHUB, "CAPACITY": {"MARGIN_HOURS": 24 * 7}}  # a week: 22 slots wanted
    kinds = sorted(Pool.objects.get(operations__pk=pk).kind for pk in capacity_top_up_pass())
    assert kinds == ["compute", "database", "storage"]
    assert capacity_top_up_pass() == []  # what is coming covers it


@pytest.mark.django_db
@pytest.mark.parametrize("status", [ReefStatus.DRAINING, ReefStatus.BROKEN])
def test_a_reef_that_cannot_grow_gets_no_pool_and_shows_a_shortfall(status):
    cell = low_on_storage(status=status)
    assert capacity_top_up_pass() == []
    (shortfall,) = reef_capacity(reef=cell["reef"]).shortfalls
    assert (shortfall.kind, shortfall.slots) == ("storage", 3) and f"is {status}" in shortfall.reason
    with pytest.raises(Refused, match=f"is {status}; it gets no new pools"):
        reef_top_up(reef=cell["reef"])


@pytest.mark.django_db
def test_a_reef_at_its_instance_limit_gets_no_pool():
    cell = low_on_storage(max_instances=8)
    assert capacity_top_up_pass() == []
    with pytest.raises(Refused, match=r"instance limit \(8 of 8\)"):
        reef_top_up(reef=cell["reef"])


@pytest.mark.django_db
def test_reef_top_up_now_orders_what_is_low_and_nothing_when_enough():
    enough = make_cell(capacity=10)
    assert reef_top_up(reef=enough["reef"]) == []
    cell = low_on_storage(capacity_overrides={"MAX_POOLS_PER_PASS": 0})  # automatic top-ups off
    assert capacity_top_up_pass() == []
    (operation,) = reef_top_up(reef=cell["reef"], requested_by=make_user())
    assert operation.kind == OperationKind.TOP_UP and operation.pool.kind == "storage"
    assert operation.requested_by is not None
    assert reef_top_up(reef=cell["reef"]) == []  # the pool is coming


@pytest.mark.django_db
def test_drain_and_activate_refuse_naming_the_state():
    cell = make_cell()
    reef_drain(reef=cell["reef"])
    assert Reef.objects.get(pk=cell["reef"].pk).status == ReefStatus.DRAINING
    with pytest.raises(IllegalTransition, match="is draining; it cannot become draining"):
        reef_drain(reef=cell["reef"])
    reef_activate(reef=cell["reef"])
    pool_drain(pool=cell["storage"])
    assert "draining" in Pool.objects.get(pk=cell["storage"].pk).status_reason
    with pytest.raises(IllegalTransition, match="is draining"):
        pool_drain(pool=cell["storage"])
    pool_activate(pool=cell["storage"])
    with pytest.raises(IllegalTransition, match="is available; it cannot become available"):
        pool_activate(pool=cell["storage"])


@pytest.mark.django_db
def test_a_region_that_is_not_active_gets_no_pool():
    cell = low_on_storage(region=make_region(status="draining"))
    assert capacity_top_up_pass() == []
    (shortfall,) = reef_capacity(reef=cell["reef"]).shortfalls
    assert "region of" in shortfall.reason and "draining" in shortfall.reason


@pytest.mark.django_db
def test_a_new_pool_copies_its_template_config_less_what_names_the_old_host():
    reef = make_reef(region=make_region(cloud="aws", location="us-east-1"))
    make_cell(reef)
    make_pool(reef, PoolKind.STORAGE, capacity=10, provider="aws_storage_gateway", status=PoolStatus.DRAINING,
              config={"gateway_arn": "arn:old", "role_arn": "arn:role", "bucket_prefix": "acme-"})
    Reef.objects.filter(pk=reef.pk).update(capacity_overrides={"FLOOR": {"storage": 15}})
    operation_ids = capacity_top_up_pass()
    pool = Pool.objects.get(operations__pk__in=operation_ids, kind="storage")
    assert pool.provider == "aws_storage_gateway"  # the reef's newest storage pool's provider
    assert pool.config == {"role_arn": "arn:role", "bucket_prefix": "acme-"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"FLOOR": {"storage": 20}, "LEAD_TIME_HOURS": {"aws_storage_gateway": 6.5}, "MARGIN_HOURS": 12,
          "PROVIDER": {"database": "postgres"}, "MAX_POOLS_PER_PASS": 0}, None),
        ([], "must be a JSON object"),
        ({"FLOORS": {}}, "unknown capacity key 'FLOORS'"),
        ({"FLOOR": 3}, "FLOOR must be an object"),
        ({"FLOOR": {"tape": 3}}, "neither a pool kind nor a provider"),
        ({"FLOOR": {"storage": -1}}, "below 0"),
        ({"FLOOR": {"storage": 2.5}}, "not a whole number"),
        ({"POOL_SIZE": {"storage": 0}}, "below 1"),
        ({"MARGIN_HOURS": "soon"}, "not a number"),
        ({"PROVIDER": {"storage": "sqlite"}}, "not a storage provider"),
    ],
)
def test_overrides_are_validated(overrides, message):
    if message is None:
        thresholds_validate(overrides)
    else:
        with pytest.raises(ValidationError, match=message):
            thresholds_validate(overrides)


@pytest.mark.django_db
def test_the_reef_model_validates_its_overrides():
    reef = make_reef()
    reef.capacity_overrides = {"FLOOR": {"storage": "many"}}
    with pytest.raises(ValidationError, match="capacity_overrides"):
        reef.full_clean()


@pytest.mark.django_db
def test_overrides_written_around_the_admin_are_ignored_and_the_pass_goes_on(caplog):
    broken = make_cell(capacity=10)
    Reef.objects.filter(pk=broken["reef"].pk).update(capacity_overrides={"FLOOR": {"storage": "lots"}})
    cell = low_on_storage()
    (operation_id,) = capacity_top_up_pass()
    assert Pool.objects.get(operations__pk=operation_id).reef == cell["reef"]
    assert facts_by_kind(broken["reef"])["storage"].thresholds.floor == 5
    assert "capacity overrides ignored" in caplog.text
