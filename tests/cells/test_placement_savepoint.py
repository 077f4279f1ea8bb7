"""Placement's one statement keeps its savepoint inside the server: a reef that cannot take the instance after all is
let go (its row lock too) before the next is tried, and a slot the check constraints refuse leaves nothing taken and
the caller's transaction usable."""
import psycopg
import pytest
from django.db import connection, transaction
from django.db.models import F

from cells.choices import ShareStatus
from cells.errors import NoCapacity
from cells.models import Instance, Pool, Reef, Share
from cells.placement import instance_place
from tests.factories import make_cell, make_instance, make_reef, make_region


def _other_connection():
    settings = connection.settings_dict
    return psycopg.connect(
        host=settings["HOST"] or None, port=settings["PORT"] or None, user=settings["USER"],
        password=settings["PASSWORD"] or None, dbname=settings["NAME"],
    )


@pytest.mark.django_db(transaction=True)
def test_a_reef_that_cannot_take_the_instance_is_let_go_before_the_next_is_tried():
    region = make_region()
    roomy = make_cell(make_reef(region, max_instances=10), capacity=10)
    other = make_cell(make_reef(region, max_instances=5), capacity=5)
    instance = make_instance(region=region)
    with _other_connection() as holder:
        # Another transaction holds every free share of the roomiest reef: its counters say there is room, but no
        # share can be taken there now.
        held = holder.execute(
            "SELECT id FROM cells_share WHERE pool_id = %s AND status = 'available' FOR UPDATE",
            [roomy["storage"].pk],
        ).fetchall()
        assert len(held) == 10
        with transaction.atomic():
            instance_place(instance=instance)
            assert instance.reef_id == other["reef"].pk
            # Still inside the placing transaction: the roomiest reef is not locked by it.
            with _other_connection() as probe:
                probe.execute("SELECT id FROM cells_reef WHERE id = %s FOR UPDATE NOWAIT", [roomy["reef"].pk])
                probe.rollback()
        holder.rollback()
    assert Reef.objects.get(pk=roomy["reef"].pk).placed_instances == 0
    assert not Share.objects.filter(pool=roomy["storage"], status=ShareStatus.ASSIGNED).exists()
    assert Share.objects.get(instance=instance).pool_id == other["storage"].pk
    assert Reef.objects.get(pk=other["reef"].pk).placed_instances == 1


@pytest.mark.django_db
def test_a_slot_the_database_refuses_leaves_nothing_taken_and_the_transaction_usable():
    cell = make_cell(capacity=2)
    region = cell["reef"].region
    instance_place(instance=make_instance(region=region))
    # The storage pool's counter drifted to full while a share is still available (as a counter read from a snapshot
    # older than the reef's lock can be): the share is taken, the check constraint refuses the slot it counts.
    Pool.objects.filter(pk=cell["storage"].pk).update(slots_held=F("capacity"))
    second = make_instance(region=region)
    with transaction.atomic():
        with pytest.raises(NoCapacity):
            instance_place(instance=second)
        # The caller's transaction is still usable and nothing was taken.
        assert Instance.objects.filter(pk=second.pk, reef__isnull=True, database_pool__isnull=True).exists()
        assert not Share.objects.filter(instance=second).exists()
        assert Reef.objects.get(pk=cell["reef"].pk).placed_instances == 1
        assert Pool.objects.get(pk=cell["storage"].pk).slots_held == 2
        assert Share.objects.filter(pool=cell["storage"], status=ShareStatus.AVAILABLE).count() == 1
