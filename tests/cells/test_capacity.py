"""Free and used capacity come from annotations: right numbers, one query for a whole list."""
import pytest

from cells import selectors
from cells.choices import InstanceState, PoolKind, PoolStatus, ReefStatus, ShareStatus
from cells.models import Share
from tests.factories import make_cell, make_instance, make_pool, make_reef, make_region

pytestmark = pytest.mark.django_db


def place(cell, state=InstanceState.RUNNING, take_share=True):
    instance = make_instance(
        reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"], state=state
    )
    if take_share:
        share = cell["storage"].shares.filter(status=ShareStatus.AVAILABLE).order_by("slot").first()
        Share.objects.filter(pk=share.pk).update(status=ShareStatus.ASSIGNED, instance=instance)
    return instance


def test_pool_usage_counts_slot_holding_instances_and_shares():
    cell = make_cell(capacity=4)
    place(cell)
    place(cell, state=InstanceState.PENDING)
    place(cell, state=InstanceState.DECOMMISSIONED, take_share=False)  # holds nothing
    pools = {p.kind: p for p in selectors.pools_with_usage().filter(reef=cell["reef"])}
    assert (pools[PoolKind.DATABASE].used_slots, pools[PoolKind.DATABASE].free_slots) == (2, 2)
    assert (pools[PoolKind.COMPUTE].used_slots, pools[PoolKind.COMPUTE].free_slots) == (2, 2)
    assert (pools[PoolKind.STORAGE].used_slots, pools[PoolKind.STORAGE].free_slots) == (2, 2)


def test_unavailable_pool_has_no_free_slots():
    pool = make_pool(status=PoolStatus.DRAINING, capacity=5)
    assert selectors.pools_with_usage().get(pk=pool.pk).free_slots == 0


def test_failed_share_is_neither_used_nor_free():
    pool = make_pool(kind=PoolKind.STORAGE, capacity=3)
    Share.objects.filter(pool=pool, slot=0).update(status=ShareStatus.FAILED)
    annotated = selectors.pools_with_usage().get(pk=pool.pk)
    assert (annotated.used_slots, annotated.free_slots) == (0, 2)


def test_reef_capacity_is_the_scarcest_kind():
    cell = make_cell(capacity=5, max_instances=3)
    make_pool(cell["reef"], PoolKind.DATABASE, capacity=7)  # a second database pool adds to the total
    make_pool(cell["reef"], PoolKind.DATABASE, capacity=100, dedicated=True)  # dedicated: not for signups
    make_pool(cell["reef"], PoolKind.COMPUTE, capacity=100, status=PoolStatus.PROVISIONING)  # not yet usable
    place(cell)
    reef = selectors.reefs_with_capacity().get(pk=cell["reef"].pk)
    assert reef.instance_count == 1
    assert reef.free_instance_slots == 2
    assert reef.free_database_slots == 11
    assert reef.free_compute_slots == 4
    assert reef.free_storage_slots == 4
    assert reef.placeable_slots == 2


def test_reef_without_pools_of_a_kind_can_place_nothing():
    reef = make_reef()
    make_pool(reef, PoolKind.DATABASE)
    make_pool(reef, PoolKind.STORAGE)
    assert selectors.reefs_with_capacity().get(pk=reef.pk).placeable_slots == 0


def test_region_capacity_counts_active_reefs_only():
    region = make_region()
    active = make_cell(make_reef(region, max_instances=10))
    make_reef(region, max_instances=50, status=ReefStatus.DRAINING)
    place(active)
    annotated = selectors.regions_with_capacity().get(pk=region.pk)
    assert (annotated.reef_count, annotated.instance_count, annotated.free_instance_slots) == (2, 1, 9)


@pytest.mark.parametrize("reefs", [1, 8])
def test_capacity_lists_cost_one_query_whatever_their_length(reefs, django_assert_num_queries):
    region = make_region()
    for _ in range(reefs):
        place(make_cell(make_reef(region)))
    with django_assert_num_queries(1):
        assert len(list(selectors.reefs_with_capacity())) == reefs
    with django_assert_num_queries(1):
        assert len(list(selectors.pools_with_usage())) == reefs * 3
    with django_assert_num_queries(1):
        assert len(list(selectors.regions_with_capacity())) == 1
