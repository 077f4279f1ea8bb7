"""Every rule of the cell model is rejected by the database itself, whatever code writes the row."""
import pytest
from django.db import DataError, IntegrityError, transaction

from cells.choices import OperationKind, OperationState, PoolKind, Provider, ShareStatus
from cells.models import Operation, Pool, Reef, Region, Share
from tests.factories import make_instance, make_pool, make_reef, make_region

pytestmark = pytest.mark.django_db


def rejected(fn, match=None):
    with pytest.raises((IntegrityError, DataError), match=match), transaction.atomic():
        fn()


def test_region_rejects_unknown_cloud_and_status():
    rejected(lambda: Region.objects.create(slug="x", name="x", cloud="gcp"), "region_cloud_valid")
    rejected(lambda: Region.objects.create(slug="y", name="y", status="sleeping"), "region_status_valid")


def test_reef_slug_is_unique_within_its_region_only():
    region, other = make_region(), make_region()
    make_reef(region, slug="r1")
    make_reef(other, slug="r1")  # another region may reuse it
    rejected(lambda: make_reef(region, slug="r1"), "reef_slug_unique_in_region")


def test_reef_needs_room_for_an_instance():
    rejected(lambda: make_reef(max_instances=0), "reef_max_instances_positive")


@pytest.mark.parametrize(
    "kind,provider",
    [
        (PoolKind.DATABASE, Provider.LOCAL_FS),
        (PoolKind.STORAGE, Provider.POSTGRES),
        (PoolKind.COMPUTE, Provider.AWS_RDS),
        (PoolKind.DATABASE, "made_up"),
    ],
)
def test_pool_provider_must_match_its_kind(kind, provider):
    reef = make_reef()
    rejected(
        lambda: Pool.objects.create(reef=reef, name="p", kind=kind, provider=provider, capacity=1),
        "pool_provider_matches_kind",
    )


@pytest.mark.parametrize(
    "kind,provider",
    [(PoolKind.DATABASE, Provider.AZURE_SQL), (PoolKind.STORAGE, Provider.AWS_STORAGE_GATEWAY),
     (PoolKind.COMPUTE, Provider.KUBERNETES)],
)
def test_pool_accepts_a_provider_of_its_kind(kind, provider):
    Pool.objects.create(reef=make_reef(), name="p", kind=kind, provider=provider, capacity=1)


def test_pool_capacity_positive():
    rejected(lambda: make_pool(capacity=0), "pool_capacity_positive")


def test_share_slot_unique_per_pool():
    pool = make_pool(kind=PoolKind.STORAGE, capacity=3)  # has slots 0..2
    rejected(lambda: Share.objects.create(pool=pool, slot=1, name="dup"), "share_slot_unique_in_pool")


def test_share_slot_below_capacity():
    pool = make_pool(kind=PoolKind.STORAGE, capacity=3)
    rejected(lambda: Share.objects.create(pool=pool, slot=3, name="over"), "share_slot_below_capacity")
    share = pool.shares.get(slot=0)
    rejected(lambda: Share.objects.filter(pk=share.pk).update(slot=7), "share_slot_below_capacity")


def test_share_only_in_storage_pool():
    pool = make_pool(kind=PoolKind.DATABASE)
    rejected(lambda: Share.objects.create(pool=pool, slot=0, name="s"), "share_in_storage_pool")


def test_pool_capacity_cannot_shrink_below_a_used_slot():
    pool = make_pool(kind=PoolKind.STORAGE, capacity=3)
    rejected(lambda: Pool.objects.filter(pk=pool.pk).update(capacity=2), "pool_capacity_covers_shares")
    Share.objects.filter(pool=pool, slot=2).delete()
    Pool.objects.filter(pk=pool.pk).update(capacity=2)  # now legal


def test_share_assigned_if_and_only_if_it_has_an_instance():
    pool = make_pool(kind=PoolKind.STORAGE, capacity=2)
    share = pool.shares.get(slot=0)
    instance = make_instance(region=pool.reef.region)
    rejected(lambda: Share.objects.filter(pk=share.pk).update(status=ShareStatus.ASSIGNED), "share_assigned_iff")
    rejected(lambda: Share.objects.filter(pk=share.pk).update(instance=instance), "share_assigned_iff")
    Share.objects.filter(pk=share.pk).update(status=ShareStatus.ASSIGNED, instance=instance)


def test_share_holds_one_instance_and_an_instance_one_share():
    pool = make_pool(kind=PoolKind.STORAGE, capacity=2)
    instance = make_instance(region=pool.reef.region)
    Share.objects.filter(pool=pool, slot=0).update(status=ShareStatus.ASSIGNED, instance=instance)
    rejected(lambda: Share.objects.filter(pool=pool, slot=1).update(status=ShareStatus.ASSIGNED, instance=instance))


@pytest.mark.parametrize(
    "name",
    ["ab", "a" * 41, "-abc", "abc-", "ab_c", "Abc", "ab.c", "www", "api", "admin", "ab c", "é-name"],
)
def test_instance_name_must_be_a_free_dns_label(name):
    rejected(lambda: make_instance(name=name))


@pytest.mark.parametrize("name", ["abc", "a-b", "a" * 40, "0day", "team-42-prod"])
def test_instance_name_accepts_dns_labels(name):
    make_instance(name=name)


def test_instance_name_unique():
    make_instance(name="acme")
    rejected(lambda: make_instance(name="acme"), "name")


def test_instance_resource_minimums():
    rejected(lambda: make_instance(cpu_millicores=0), "instance_cpu_minimum")
    rejected(lambda: make_instance(memory_mib=1), "instance_memory_minimum")


def test_one_active_operation_of_a_kind_per_target():
    instance = make_instance()
    Operation.objects.create(kind=OperationKind.PROVISION, instance=instance)
    rejected(lambda: Operation.objects.create(kind=OperationKind.PROVISION, instance=instance), "one_active")
    # Another kind, or a finished one of the same kind, is fine.
    Operation.objects.create(kind=OperationKind.BACKUP, instance=instance)
    Operation.objects.filter(kind=OperationKind.PROVISION).update(state=OperationState.FAILED)
    Operation.objects.create(kind=OperationKind.PROVISION, instance=instance)


def test_one_active_top_up_per_reef():
    reef = make_reef()
    Operation.objects.create(kind=OperationKind.TOP_UP, reef=reef, state=OperationState.RUNNING)
    rejected(lambda: Operation.objects.create(kind=OperationKind.TOP_UP, reef=reef), "one_active_per_reef")


def test_operation_has_exactly_one_target():
    instance, reef = make_instance(), make_reef()
    rejected(lambda: Operation.objects.create(kind=OperationKind.BACKUP), "operation_has_one_target")
    rejected(
        lambda: Operation.objects.create(kind=OperationKind.BACKUP, instance=instance, reef=reef),
        "operation_has_one_target",
    )


def test_reef_status_valid():
    rejected(lambda: Reef.objects.create(region=make_region(), slug="r", status="on-fire"), "reef_status_valid")
