"""Concurrent signups on PostgreSQL: every slot is given once, no pool or reef overflows, the rest are told."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from cells import selectors
from cells.choices import PoolKind, ShareStatus
from cells.errors import NoCapacity
from cells.models import CapacityShortfall, Instance, Share
from provisioning.lifecycle import instance_signup
from tests.factories import make_cell, make_pool, make_reef, make_region

SIGNUPS = 50


def _signup_all(region):
    barrier = threading.Barrier(SIGNUPS)

    def one(n):
        try:
            barrier.wait()
            instance_signup(
                name=f"rush-{n:02d}", region=region,
                new_owner={"email": f"rush{n}@example.com", "password": "a-long-enough-passphrase"},
            )
            return "placed"
        except NoCapacity:
            return "no capacity"
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=SIGNUPS) as pool:
        return list(pool.map(one, range(SIGNUPS)))


def _one_reef_bounded_by_shares(region):
    cell = make_cell(make_reef(region, max_instances=40), capacity=40)
    make_pool(cell["reef"], PoolKind.STORAGE, capacity=10)  # a second storage pool: 10 more shares
    # The first storage pool keeps 12 of its 40 shares: 22 shares in all.
    Share.objects.filter(pool=cell["storage"], slot__gte=12).update(status=ShareStatus.RETIRED)
    return 22


def _two_reefs_bounded_by_max_instances(region):
    make_cell(make_reef(region, max_instances=8), capacity=30)
    make_cell(make_reef(region, max_instances=7), capacity=30)
    return 15


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("topology", [_one_reef_bounded_by_shares, _two_reefs_bounded_by_max_instances])
def test_fifty_parallel_signups_take_each_slot_once(topology):
    region = make_region()
    free_slots = topology(region)

    outcomes = _signup_all(region)

    assert outcomes.count("placed") == free_slots
    assert outcomes.count("no capacity") == SIGNUPS - free_slots
    assert CapacityShortfall.objects.count() == SIGNUPS - free_slots
    instances = Instance.objects.filter(region=region)
    assert instances.count() == free_slots  # refused signups left nothing behind
    assigned = Share.objects.filter(status=ShareStatus.ASSIGNED)
    assert assigned.count() == free_slots
    assert set(assigned.values_list("instance_id", flat=True)) == set(instances.values_list("pk", flat=True))
    for pool in selectors.pools_with_usage():
        assert pool.used_slots <= pool.capacity, pool
    for reef in selectors.reefs_with_capacity().filter(region=region):
        assert reef.instance_count <= reef.max_instances, reef
