"""The staff capacity page and the reef and pool actions: rendered for staff only, a constant number of queries
whatever the fleet, reefs near exhaustion highlighted; actions call the services and name states on refusal."""
import json
import re
from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from cells.choices import InstanceState, OperationKind, PoolKind, PoolStatus, ReefStatus, ShareStatus
from cells.models import CapacityShortfall, Operation, Pool, Reef, Share
from tests.factories import make_cell, make_instance, make_reef, make_region, make_user

pytestmark = pytest.mark.django_db
CAPACITY = "/admin/cells/reef/capacity/"


def hold_shares(pool, count):
    for share in pool.shares.filter(status=ShareStatus.AVAILABLE).order_by("slot")[:count]:
        instance = make_instance(reef=pool.reef, state=InstanceState.RUNNING)
        Share.objects.filter(pk=share.pk).update(status=ShareStatus.ASSIGNED, instance=instance)


def fleet(reefs: int, region=None):
    region = region or make_region()
    cells = [make_cell(make_reef(region), capacity=10) for _ in range(reefs)]
    hold_shares(cells[0]["storage"], 8)  # low: a top-up is due
    return cells


def test_the_capacity_page_is_linked_and_reachable():
    assert reverse("admin:cells_reef_capacity") == CAPACITY


def test_staff_see_the_capacity_page_with_a_chart(staff_client):
    cells = fleet(2)
    response = staff_client.get(CAPACITY)
    assert response.status_code == 200
    page = response.content.decode()
    reef = cells[0]["reef"]
    assert f"{reef.region.slug}/{reef.slug}" in page
    assert re.search(r"<svg[^>]*class=\"capacity-chart\"", page) and "<rect" in page
    # Nothing fetched from elsewhere: no src/href to another host (a random CSRF token may well contain "cdn").
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", page)
    assert "<script" not in page.split('id="content-main"')[1]
    assert staff_client.get(reverse("admin:cells_reef_changelist")).content.decode().count(CAPACITY) == 1


def test_others_are_refused(client):
    assert client.get(CAPACITY).status_code == 302  # to the admin login
    client.force_login(make_user())
    response = client.get(CAPACITY)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    client.force_login(make_user(is_staff=True))  # staff without the right to view reefs
    assert client.get(CAPACITY).status_code == 403


def test_a_reef_near_exhaustion_is_highlighted_and_the_due_top_up_named(staff_client):
    low, fine = fleet(2)
    page = staff_client.get(CAPACITY).content.decode()
    rows = {m.group(2): m.group(1) for m in re.finditer(r'<tr class="([^"]*)" data-reef="([^"]+)"', page)}
    label = f"{low['reef'].region.slug}/{low['reef'].slug}"
    assert rows[label] == "capacity-attention"
    assert rows[f"{fine['reef'].region.slug}/{fine['reef'].slug}"] == ""
    assert 'data-kind="storage" data-verdict="order"' in page
    assert f"{label}: order a storage pool of 10 slots (local_fs)" in page


def test_a_reef_that_cannot_grow_shows_its_shortfall_and_a_failed_pool_its_instances(staff_client):
    cell = make_cell(make_reef(status=ReefStatus.DRAINING), capacity=10)
    hold_shares(cell["storage"], 9)
    Pool.objects.filter(pk=cell["storage"].pk).update(status=PoolStatus.FAILED, status_reason="disk lost")
    page = staff_client.get(CAPACITY).content.decode()
    assert 'data-verdict="short"' in page
    assert "short of 5 storage slots" in page and "is draining" in page
    failed_row = page.split('id="attention-pools"')[1]
    assert cell["storage"].name in failed_row and "disk lost — 9 instances affected" in failed_row


@pytest.mark.parametrize("region_filter", [False, True])
def test_the_page_costs_the_same_queries_for_2_and_20_reefs(staff_client, django_assert_num_queries, region_filter):
    region = make_region()
    fleet(2, region)
    params = {"region": region.slug} if region_filter else {}
    staff_client.get(CAPACITY, params)  # warm the session and permission caches
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as two:
        assert staff_client.get(CAPACITY, params).status_code == 200
    fleet(18, region)
    make_cell(make_reef(make_region()), capacity=10)  # another region too
    with django_assert_num_queries(len(two.captured_queries)):
        response = staff_client.get(CAPACITY, params)
    assert response.content.decode().count('data-reef="') == (20 if region_filter else 21)


def _action(client, model, action, objects, **extra):
    url = reverse(f"admin:cells_{model}_changelist")
    return client.post(url, {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objects], **extra}, follow=True)


def _messages(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_each_region_counts_its_signups_refused_in_the_last_seven_days(staff_client):
    busy, quiet = make_region(slug="busy", name="Busy"), make_region(slug="quiet", name="Quiet")
    fleet(1, busy), fleet(1, quiet)
    for name in ("a", "b", "old"):
        CapacityShortfall.objects.create(region=busy, instance_name=name, reason="no reef has room")
    CapacityShortfall.objects.filter(instance_name="old").update(created_at=timezone.now() - timedelta(days=8))
    page = staff_client.get(CAPACITY).content.decode()
    assert "2 signups refused for want of capacity" in page  # the one 8 days old is not counted
    assert page.count("No signup refused") == 1  # the quiet region


def test_reef_actions_top_up_now_and_drain(staff_client):
    low, fine = fleet(2)
    response = _action(staff_client, "reef", "top_up_now", [low["reef"], fine["reef"]])
    messages = " | ".join(_messages(response))
    assert "ordered storage pool storage-1" in messages
    assert "has enough: database 10 free + 0 coming ≥ 5" in messages
    operation = Operation.objects.get(kind=OperationKind.TOP_UP)
    assert operation.requested_by.is_staff and operation.pool.reef == low["reef"]

    response = _action(staff_client, "reef", "drain", [fine["reef"]])
    assert Reef.objects.get(pk=fine["reef"].pk).status == ReefStatus.DRAINING
    response = _action(staff_client, "reef", "drain", [fine["reef"]])
    assert any("is draining; it cannot become draining" in m for m in _messages(response))
    response = _action(staff_client, "reef", "top_up_now", [fine["reef"]])
    assert any("is draining; it gets no new pools" in m for m in _messages(response))
    _action(staff_client, "reef", "activate", [fine["reef"]])
    assert Reef.objects.get(pk=fine["reef"].pk).status == ReefStatus.ACTIVE


def test_pool_actions_drain_mark_failed_with_its_instances_and_replace(staff_client):
    (cell,) = fleet(1)
    storage = cell["storage"]
    _action(staff_client, "pool", "drain", [storage])
    assert Pool.objects.get(pk=storage.pk).status == PoolStatus.DRAINING
    response = _action(staff_client, "pool", "replace", [storage])
    assert any("is draining; mark it failed before replacing it" in m for m in _messages(response))

    confirm = _action(staff_client, "pool", "mark_failed", [storage])
    page = confirm.content.decode()
    held = Share.objects.filter(pool=storage, instance__isnull=False)
    holders = sorted(held.values_list("instance__name", flat=True))
    assert len(holders) == 8 and all(name in page for name in holders)
    assert Pool.objects.get(pk=storage.pk).status == PoolStatus.DRAINING  # nothing done before confirming

    response = _action(staff_client, "pool", "mark_failed", [storage], confirm="yes", reason="gateway lost")
    storage.refresh_from_db()
    assert storage.status == PoolStatus.FAILED and storage.status_reason.startswith("failed: gateway lost")
    assert any(f"{storage} is failed; affected: {', '.join(holders)}" in m for m in _messages(response))
    change = staff_client.get(reverse("admin:cells_pool_change", args=[storage.pk])).content.decode()
    assert all(name in change for name in holders)

    response = _action(staff_client, "pool", "replace", [storage])
    operation = Operation.objects.get(kind=OperationKind.REPLACE, pool=storage)
    assert any(f"replace operation #{operation.pk} queued" in m for m in _messages(response))
    assert Pool.objects.get(replaces=storage).status == PoolStatus.PROVISIONING


def test_the_reef_form_validates_and_saves_its_overrides(staff_client):
    reef = make_reef()
    url = reverse("admin:cells_reef_change", args=[reef.pk])
    form = {
        "region": reef.region.pk, "slug": reef.slug, "status": reef.status, "max_instances": 500,
        "rollout_ring": 1, "ingress_address": "127.0.0.1",
        "pools-TOTAL_FORMS": 0, "pools-INITIAL_FORMS": 0, "pools-MIN_NUM_FORMS": 0, "pools-MAX_NUM_FORMS": 1000,
    }
    bad = staff_client.post(url, {**form, "capacity_overrides": json.dumps({"FLOOR": {"tape": 3}})})
    assert bad.status_code == 200 and "neither a pool kind nor a provider" in bad.content.decode()
    overrides = {"FLOOR": {"storage": 12}, "MARGIN_HOURS": 6}
    good = staff_client.post(url, {**form, "capacity_overrides": json.dumps(overrides)})
    assert good.status_code == 302
    assert Reef.objects.get(pk=reef.pk).capacity_overrides == overrides
    page = staff_client.get(url).content.decode()
    assert "capacity now" in page.lower() and "<td>12</td>" in page  # the effective storage floor


def test_the_pool_list_links_to_the_capacity_page(staff_client):
    make_cell()
    assert CAPACITY in staff_client.get(reverse("admin:cells_pool_changelist")).content.decode()


def test_a_pool_kind_label_is_shown(staff_client):
    cell = make_cell()
    page = staff_client.get(CAPACITY).content.decode()
    for kind in (PoolKind.DATABASE, PoolKind.STORAGE, PoolKind.COMPUTE):
        assert f'data-kind="{kind}"' in page
    assert cell["reef"].slug in page


def test_a_pool_provisioning_for_too_long_is_flagged(staff_client):
    from datetime import timedelta

    from django.utils import timezone

    cell = make_cell()
    stuck = Pool.objects.create(reef=cell["reef"], name="database-9", kind=PoolKind.DATABASE, provider="sqlite",
                                capacity=10, status=PoolStatus.PROVISIONING)
    fresh = Pool.objects.create(reef=cell["reef"], name="database-10", kind=PoolKind.DATABASE, provider="sqlite",
                                capacity=10, status=PoolStatus.PROVISIONING)
    Pool.objects.filter(pk=stuck.pk).update(created_at=timezone.now() - timedelta(hours=9))
    attention = staff_client.get(CAPACITY).content.decode().split('id="attention-pools"')[1]
    assert "database-9" in attention and "look at its top-up operation" in attention
    assert fresh.name not in attention


def test_the_page_summarises_a_large_region_and_pages_its_reefs(staff_client, monkeypatch):
    from provisioning.capacity import overview

    monkeypatch.setattr(overview, "REEFS_PER_PAGE", 3)
    region = make_region()
    cells = [make_cell(make_reef(region), capacity=10) for _ in range(7)]
    low = cells[4]
    make_instance(reef=low["reef"], state=InstanceState.RUNNING)
    Pool.objects.filter(pk=low["database"].pk).update(capacity=1)  # full: needs attention
    rows = re.findall(r'data-reef="([^"]+)"', staff_client.get(CAPACITY).content.decode())
    label = f"{region.slug}/{low['reef'].slug}"
    assert rows[0] == label and len(rows) == 4  # the reef needing attention, then a page of three others
    pages = [re.findall(r'data-reef="([^"]+)"', staff_client.get(CAPACITY, {"region": region.slug, "page": n})
                        .content.decode()) for n in (1, 2)]
    assert all(page[0] == label for page in pages)
    assert sorted(r for page in pages for r in page[1:]) == sorted(
        f"{region.slug}/{c['reef'].slug}" for c in cells if c is not low)
