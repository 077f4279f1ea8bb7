"""The slot counters the database keeps: they follow every change of the rows, an over-full reef or pool is refused
by the database itself, a stale copy in memory never overwrites them, drift is found by a recount, and placement
reads them in a number of statements that does not grow with the fleet."""
import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from cells.choices import InstanceState, PoolKind, PoolStatus, ReefStatus, ShareStatus, Tier
from cells.counters import counters_drift, counters_refill
from cells.errors import NoCapacity
from cells.models import Instance, Pool, Reef, Share
from cells.placement import instance_place
from tests.factories import make_cell, make_instance, make_pool, make_reef, make_region, make_user

pytestmark = pytest.mark.django_db


def counters(cell):
    reef = Reef.objects.get(pk=cell["reef"].pk)
    pools = {p.kind: (p.slots_held, p.shares_available) for p in Pool.objects.filter(reef=reef)}
    return reef.placed_instances, pools


def test_counters_follow_placement_state_changes_and_deletion():
    cell = make_cell(capacity=4)
    assert counters(cell) == (0, {"database": (0, 0), "compute": (0, 0), "storage": (0, 4)})
    instance = make_instance(region=cell["reef"].region)
    instance_place(instance=instance)
    assert counters(cell) == (1, {"database": (1, 0), "compute": (1, 0), "storage": (1, 3)})
    Instance.objects.filter(pk=instance.pk).update(state=InstanceState.RUNNING)  # holding → holding: no change
    assert counters(cell)[0] == 1
    Share.objects.filter(instance=instance).update(status=ShareStatus.ARCHIVING, instance=None)
    assert counters(cell)[1]["storage"] == (1, 3)  # an archiving share is still held
    Instance.objects.filter(pk=instance.pk).update(state=InstanceState.DECOMMISSIONED)
    Share.objects.filter(pool=cell["storage"], status=ShareStatus.ARCHIVING).update(status=ShareStatus.AVAILABLE)
    assert counters(cell) == (0, {"database": (0, 0), "compute": (0, 0), "storage": (0, 4)})
    Instance.objects.filter(pk=instance.pk).update(state=InstanceState.STOPPED)  # back to holding (force-state)
    assert counters(cell) == (1, {"database": (1, 0), "compute": (1, 0), "storage": (0, 4)})
    Instance.objects.filter(pk=instance.pk).delete()
    Share.objects.filter(pool=cell["storage"], slot=3).delete()
    assert counters(cell) == (0, {"database": (0, 0), "compute": (0, 0), "storage": (0, 3)})
    assert counters_drift() == []


def test_moving_an_instance_moves_its_counts():
    region = make_region()
    first, second = make_cell(make_reef(region)), make_cell(make_reef(region))
    instance = make_instance(region=region, reef=first["reef"], database_pool=first["database"],
                             compute_pool=first["compute"])
    Instance.objects.filter(pk=instance.pk).update(reef=second["reef"], database_pool=second["database"])
    assert counters(first) == (0, {"database": (0, 0), "compute": (1, 0), "storage": (0, 10)})
    assert counters(second) == (1, {"database": (1, 0), "compute": (0, 0), "storage": (0, 10)})
    assert counters_drift() == []


def rejected(fn, constraint):
    with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
        fn()


def test_the_database_refuses_an_over_full_reef_whatever_code_writes():
    cell = make_cell(make_reef(max_instances=1), capacity=5)
    make_instance(region=cell["reef"].region, reef=cell["reef"], state=InstanceState.RUNNING)
    rejected(lambda: make_instance(region=cell["reef"].region, reef=cell["reef"]), "reef_placed_within_limit")
    rejected(lambda: Reef.objects.filter(pk=cell["reef"].pk).update(max_instances=0), "reef_max_instances_positive")
    parked = make_instance(region=cell["reef"].region, reef=cell["reef"], state=InstanceState.DECOMMISSIONED)
    rejected(lambda: Instance.objects.filter(pk=parked.pk).update(state=InstanceState.RUNNING),
             "reef_placed_within_limit")


def test_the_database_refuses_an_over_full_pool_whatever_code_writes():
    cell = make_cell(make_reef(max_instances=10), capacity=1)
    make_instance(region=cell["reef"].region, database_pool=cell["database"])
    rejected(lambda: make_instance(region=cell["reef"].region, database_pool=cell["database"]),
             "pool_held_within_capacity")
    rejected(lambda: make_instance(region=cell["reef"].region, compute_pool=cell["compute"],
                                   state=InstanceState.RUNNING) and
             make_instance(region=cell["reef"].region, compute_pool=cell["compute"]), "pool_held_within_capacity")
    rejected(lambda: Pool.objects.filter(pk=cell["database"].pk).update(capacity=0), "pool_capacity_positive")


def test_lowering_a_limit_below_what_is_placed_is_refused():
    cell = make_cell(make_reef(max_instances=5), capacity=5)
    for _ in range(3):
        instance_place(instance=make_instance(region=cell["reef"].region))
    rejected(lambda: Reef.objects.filter(pk=cell["reef"].pk).update(max_instances=2), "reef_placed_within_limit")
    rejected(lambda: Pool.objects.filter(pk=cell["compute"].pk).update(capacity=2), "pool_held_within_capacity")
    Reef.objects.filter(pk=cell["reef"].pk).update(max_instances=3)  # down to what is placed is fine


def test_saving_a_stale_copy_never_overwrites_a_counter():
    cell = make_cell(capacity=4)
    stale_reef, stale_pool = Reef.objects.get(pk=cell["reef"].pk), Pool.objects.get(pk=cell["database"].pk)
    instance_place(instance=make_instance(region=cell["reef"].region))
    stale_reef.status_reason = "edited by staff"
    stale_reef.save()
    stale_pool.config = {"note": "edited"}
    stale_pool.save()
    assert counters(cell)[0] == 1 and counters(cell)[1]["database"] == (1, 0)
    assert counters_drift() == []


def test_drift_is_found_by_a_recount_and_refill_repairs_it():
    cell = make_cell(capacity=4)
    instance_place(instance=make_instance(region=cell["reef"].region))
    # What a hand-made repair or a bulk load with the triggers off would leave behind.
    Reef.objects.filter(pk=cell["reef"].pk).update(placed_instances=3)
    Pool.objects.filter(pk=cell["compute"].pk).update(slots_held=0)
    drift = {(d.table, d.row_id, d.counter): (d.kept, d.counted) for d in counters_drift()}
    assert drift == {("reef", cell["reef"].pk, "placed_instances"): (3, 1),
                     ("pool", cell["compute"].pk, "slots_held"): (0, 1)}
    counters_refill()
    assert counters_drift() == []
    assert counters(cell) == (1, {"database": (1, 0), "compute": (1, 0), "storage": (1, 3)})


def _fleet(region, *, reefs, per_reef):
    """``reefs`` full-ish reefs of ``per_reef`` placed instances each, made in bulk (the triggers count them)."""
    owner = make_user()
    for _ in range(reefs):
        cell = make_cell(make_reef(region, max_instances=per_reef + 5), capacity=per_reef + 5)
        Instance.objects.bulk_create([
            Instance(name=f"f{cell['reef'].pk}-{n}", owner=owner, region=region, reef=cell["reef"],
                     database_pool=cell["database"], compute_pool=cell["compute"], server_version="1",
                     state=InstanceState.RUNNING)
            for n in range(per_reef)
        ])


@pytest.mark.parametrize("reefs,per_reef", [(1, 2), (6, 40)])
def test_placement_is_one_statement_whatever_the_fleet(reefs, per_reef):
    region = make_region()
    _fleet(region, reefs=reefs, per_reef=per_reef)
    instance = make_instance(region=region)
    instance.region  # noqa: B018  (loaded, as the provision step has it)
    with transaction.atomic():  # as a signup places: inside its transaction
        with CaptureQueriesContext(connection) as queries:
            instance_place(instance=instance)
    # One round trip: no savepoint of the client's, no count of the fleet, whatever its size.
    assert len(queries) == 1, [q["sql"][:80] for q in queries]
    assert "count(" not in queries[0]["sql"].lower() and "savepoint" not in queries[0]["sql"].lower()
    share = Share.objects.select_related("pool").get(instance=instance)
    instance.refresh_from_db()
    assert share.pool.reef_id == instance.reef_id and instance.database_pool.reef_id == instance.reef_id
    assert instance.compute_pool.reef_id == instance.reef_id


def _pool_rows_read() -> int:
    """Rows of cells_pool read so far in this transaction, by sequential and index scans."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq_tup_read + COALESCE(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables "
                       "WHERE relname = 'cells_pool'")
        return cursor.fetchone()[0]


def test_placement_checks_the_pools_of_one_reef_however_many_the_region_has():
    # The region's reefs are walked roomiest first, one at a time, and only the candidate's pools are checked: never
    # every reef's pools before a sort (what the planner chose for one statement over a region of ~100 reefs).
    region = make_region()
    for _ in range(120):
        make_cell(make_reef(region, max_instances=5), capacity=5)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE cells_reef; ANALYZE cells_pool; ANALYZE cells_share")
    for _ in range(3):
        instance = make_instance(region=region)
        before = _pool_rows_read()
        with transaction.atomic():
            instance_place(instance=instance)
        assert instance.reef_id
        # The candidate's three pools checked and chosen, its storage pool walked, the counters' updates: a dozen.
        assert _pool_rows_read() - before <= 20


def test_placement_keeps_its_rules_with_counters():
    region = make_region()
    draining = make_cell(make_reef(region, status=ReefStatus.DRAINING, max_instances=50), capacity=50)
    small = make_cell(make_reef(region, max_instances=3), capacity=10)
    roomy = make_cell(make_reef(region, max_instances=6), capacity=10)
    make_pool(roomy["reef"], PoolKind.DATABASE, capacity=10, dedicated=True)
    placed = []
    for _ in range(9):
        instance = make_instance(region=region)
        instance_place(instance=instance)
        placed.append(instance.reef_id)
    # roomiest first: the 6-slot reef until it has as few free as the 3-slot one, then alternating; never draining
    assert placed[:3] == [roomy["reef"].pk] * 3
    assert placed.count(roomy["reef"].pk) == 6 and placed.count(small["reef"].pk) == 3
    assert draining["reef"].pk not in placed
    assert not Instance.objects.filter(database_pool__dedicated=True).exists()  # shared never take dedicated
    with pytest.raises(NoCapacity):
        instance_place(instance=make_instance(region=region))
    assert Reef.objects.get(pk=roomy["reef"].pk).placed_instances == 6


def test_a_dedicated_instance_takes_a_dedicated_pool():
    cell = make_cell(capacity=5)
    dedicated = make_pool(cell["reef"], PoolKind.DATABASE, capacity=1, dedicated=True)
    instance = make_instance(region=cell["reef"].region, tier=Tier.DEDICATED)
    instance_place(instance=instance)
    assert instance.database_pool_id == dedicated.pk
    assert Pool.objects.get(pk=dedicated.pk).slots_held == 1


def test_an_unavailable_pool_is_not_taken():
    cell = make_cell(capacity=5)
    Pool.objects.filter(pk=cell["compute"].pk).update(status=PoolStatus.DRAINING)
    with pytest.raises(NoCapacity):
        instance_place(instance=make_instance(region=cell["reef"].region))
