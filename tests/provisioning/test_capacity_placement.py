"""Placement and capacity states: draining pools and reefs get no instance; a dedicated pool serves one
tier=dedicated instance, never a shared one and never a second."""
import pytest

from cells.choices import PoolKind, PoolStatus, ShareStatus, Tier
from cells.errors import NoCapacity
from cells.models import Instance, Share
from cells.placement import instance_place
from provisioning.capacity import pool_drain, reef_drain
from tests.factories import make_cell, make_instance, make_pool, make_reef, make_region

pytestmark = pytest.mark.django_db


def place(region, tier=Tier.SHARED):
    instance = make_instance(region=region, tier=tier)
    instance_place(instance=instance)
    instance.refresh_from_db()
    return instance


def test_a_draining_pool_gets_no_instance():
    cell = make_cell(capacity=5)
    spare = make_pool(cell["reef"], PoolKind.STORAGE, capacity=5)
    pool_drain(pool=cell["storage"])
    placed = [place(cell["reef"].region) for _ in range(5)]
    assert {Share.objects.get(instance=i).pool_id for i in placed} == {spare.pk}
    with pytest.raises(NoCapacity):
        place(cell["reef"].region)  # the draining pool still has 5 free shares: none is given
    assert cell["storage"].shares.filter(status=ShareStatus.AVAILABLE).count() == 5


@pytest.mark.parametrize("kind", [PoolKind.DATABASE, PoolKind.COMPUTE])
def test_a_draining_database_or_compute_pool_gets_no_instance(kind):
    cell = make_cell(capacity=5)
    pool_drain(pool=cell[kind])
    with pytest.raises(NoCapacity):
        place(cell["reef"].region)
    other = make_pool(cell["reef"], kind, capacity=5)
    instance = place(cell["reef"].region)
    assert getattr(instance, f"{kind}_pool_id") == other.pk


def test_a_draining_reef_gets_no_instance():
    region = make_region()
    draining = make_cell(make_reef(region), capacity=50)
    open_ = make_cell(make_reef(region), capacity=2)
    reef_drain(reef=draining["reef"])
    assert {place(region).reef_id for _ in range(2)} == {open_["reef"].pk}
    with pytest.raises(NoCapacity):
        place(region)
    assert not Instance.objects.filter(reef=draining["reef"]).exists()


def _dedicated_cell():
    cell = make_cell(capacity=10)
    reef = cell["reef"]
    return {
        **cell,
        "dedicated_database": make_pool(reef, PoolKind.DATABASE, capacity=1, dedicated=True),
        "dedicated_compute": make_pool(reef, PoolKind.COMPUTE, capacity=1, dedicated=True),
        "dedicated_storage": make_pool(reef, PoolKind.STORAGE, capacity=3, dedicated=True),
    }


def test_a_shared_instance_never_gets_a_dedicated_pool():
    cell = _dedicated_cell()
    for _ in range(10):
        instance = place(cell["reef"].region)
        assert (instance.database_pool_id, instance.compute_pool_id) == (cell["database"].pk, cell["compute"].pk)
        assert Share.objects.get(instance=instance).pool_id == cell["storage"].pk
    with pytest.raises(NoCapacity):
        place(cell["reef"].region)


def test_a_dedicated_instance_gets_dedicated_pools_and_a_second_one_never_shares_them():
    cell = _dedicated_cell()
    first = place(cell["reef"].region, tier=Tier.DEDICATED)
    assert (first.database_pool_id, first.compute_pool_id) == (
        cell["dedicated_database"].pk, cell["dedicated_compute"].pk)
    assert Share.objects.get(instance=first).pool_id == cell["dedicated_storage"].pk

    second = place(cell["reef"].region, tier=Tier.DEDICATED)  # no dedicated pool left: shared ones
    assert (second.database_pool_id, second.compute_pool_id) == (cell["database"].pk, cell["compute"].pk)
    assert Share.objects.get(instance=second).pool_id == cell["storage"].pk
    # The dedicated storage pool keeps its other two shares free: they are never given to anyone else.
    assert cell["dedicated_storage"].shares.filter(status=ShareStatus.AVAILABLE).count() == 2


def test_a_dedicated_pool_freed_by_a_failed_signup_serves_the_next_dedicated_instance():
    cell = _dedicated_cell()
    first = place(cell["reef"].region, tier=Tier.DEDICATED)
    # A failed provision releases what the instance took (provision_fail → instance_release).
    Instance.objects.filter(pk=first.pk).update(database_pool=None, compute_pool=None, reef=None, state="failed")
    Share.objects.filter(instance=first).update(status=ShareStatus.AVAILABLE, instance=None)
    second = place(cell["reef"].region, tier=Tier.DEDICATED)
    assert second.database_pool_id == cell["dedicated_database"].pk
    assert Share.objects.get(instance=second).pool_id == cell["dedicated_storage"].pk


def test_a_draining_dedicated_pool_is_not_given():
    cell = _dedicated_cell()
    pool_drain(pool=cell["dedicated_database"])
    instance = place(cell["reef"].region, tier=Tier.DEDICATED)
    assert instance.database_pool_id == cell["database"].pk
    assert instance.compute_pool_id == cell["dedicated_compute"].pk
    assert cell["dedicated_database"].status == PoolStatus.DRAINING


def test_a_dedicated_instance_completing_its_placement_in_its_reef_takes_dedicated_pools():
    cell = _dedicated_cell()
    instance = make_instance(reef=cell["reef"], tier=Tier.DEDICATED)  # a retry after a partial release
    instance_place(instance=instance)
    instance.refresh_from_db()
    assert (instance.database_pool_id, instance.compute_pool_id) == (
        cell["dedicated_database"].pk, cell["dedicated_compute"].pk)
    assert Share.objects.get(instance=instance).pool_id == cell["dedicated_storage"].pk


def _storage_scarce_cell():
    """Capacities that differ by kind: database 5, compute 5, shared storage 2 — and a dedicated storage pool with
    three free shares, which only a tier=dedicated instance may take."""
    reef = make_reef()
    return {
        "reef": reef,
        "database": make_pool(reef, PoolKind.DATABASE, capacity=5),
        "compute": make_pool(reef, PoolKind.COMPUTE, capacity=5),
        "storage": make_pool(reef, PoolKind.STORAGE, capacity=2),
        "dedicated_storage": make_pool(reef, PoolKind.STORAGE, capacity=3, dedicated=True),
    }


def _shared_instances_on_dedicated_shares(cell):
    return Share.objects.filter(pool=cell["dedicated_storage"], instance__tier=Tier.SHARED)


def test_exhausting_shared_storage_never_hands_out_a_dedicated_share():
    """The one-statement PostgreSQL path (shared instances): database and compute still have room when shared storage
    runs out, and the next signup is refused rather than given the dedicated pool's share."""
    cell = _storage_scarce_cell()
    placed = [place(cell["reef"].region) for _ in range(2)]
    assert {Share.objects.get(instance=i).pool_id for i in placed} == {cell["storage"].pk}
    for _ in range(2):  # asked again: still no
        with pytest.raises(NoCapacity):
            place(cell["reef"].region)
    assert not _shared_instances_on_dedicated_shares(cell).exists()
    assert cell["dedicated_storage"].shares.filter(status=ShareStatus.AVAILABLE).count() == 3
    assert Instance.objects.filter(reef=cell["reef"]).count() == 2  # the refused ones took nothing

    # A shared instance completing its placement in its reef (a retry after a partial release) is refused too.
    lacking = make_instance(reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"])
    with pytest.raises(NoCapacity):
        instance_place(instance=lacking)
    assert not _shared_instances_on_dedicated_shares(cell).exists()
    assert cell["dedicated_storage"].shares.filter(status=ShareStatus.AVAILABLE).count() == 3


def test_the_dedicated_path_takes_one_dedicated_pool_and_never_a_second_instance_into_it():
    """The dedicated path (row-locked reef, then slots): the first tier=dedicated instance gets the dedicated storage
    pool; with shared storage exhausted, a second one is refused rather than given another share of that pool."""
    cell = _storage_scarce_cell()
    for _ in range(2):
        place(cell["reef"].region)  # shared storage is now full
    first = place(cell["reef"].region, tier=Tier.DEDICATED)
    assert Share.objects.get(instance=first).pool_id == cell["dedicated_storage"].pk
    with pytest.raises(NoCapacity):
        place(cell["reef"].region, tier=Tier.DEDICATED)
    with pytest.raises(NoCapacity):
        place(cell["reef"].region)
    assert list(cell["dedicated_storage"].shares.exclude(instance=None).values_list("instance", flat=True)) == [
        first.pk
    ]
    assert cell["dedicated_storage"].shares.filter(status=ShareStatus.AVAILABLE).count() == 2
