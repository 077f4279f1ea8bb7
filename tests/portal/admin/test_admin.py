"""The support staff's admin: every page renders for staff, refuses others, and list pages stay cheap."""
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from cells.models import Instance, Operation, Pool, Reef, Region, Share
from tests.factories import make_cell, make_instance, make_reef, make_user

pytestmark = pytest.mark.django_db
MODELS = [Region, Reef, Pool, Share, Instance, Operation]


def _url(model, view, *args):
    return reverse(f"admin:cells_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def fleet(staff_user):
    cell = make_cell(capacity=3)
    instance = make_instance(reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"])
    operation = Operation.objects.create(
        kind="provision", instance=instance,
        steps=[{"name": "place", "started_at": "2026-11-22T00:00:00Z", "finished_at": "2026-11-22T00:00:01Z"}],
    )
    return {
        Region: cell["reef"].region, Reef: cell["reef"], Pool: cell["storage"],
        Share: cell["storage"].shares.first(), Instance: instance, Operation: operation,
    }


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_staff_see_list_and_change_pages(staff_client, fleet, model):
    listing = staff_client.get(_url(model, "changelist"))
    assert listing.status_code == 200
    expected = f"instance {fleet[Instance]}" if model is Operation else str(fleet[model])
    assert expected in listing.content.decode()
    assert staff_client.get(_url(model, "change", fleet[model].pk)).status_code == 200


def test_search_and_status_filter(staff_client, fleet):
    response = staff_client.get(_url(Instance, "changelist"), {"q": fleet[Instance].name, "state__exact": "pending"})
    assert fleet[Instance].name in response.content.decode()
    response = staff_client.get(_url(Instance, "changelist"), {"state__exact": "running"})
    assert fleet[Instance].name not in response.content.decode()


def test_operation_log_shows_steps_and_is_read_only(staff_client, fleet):
    page = staff_client.get(_url(Operation, "change", fleet[Operation].pk)).content.decode()
    assert "place" in page and "2026-11-22T00:00:01Z" in page
    assert staff_client.get(reverse("admin:cells_operation_add")).status_code == 403


def test_reef_list_shows_free_capacity(staff_client, fleet):
    response = staff_client.get(_url(Reef, "changelist"))
    page = response.content.decode().lower()
    assert "free shares" in page and "can place" in page
    (reef,) = response.context["cl"].result_list
    counts = (reef.instance_count, reef.free_storage_slots, reef.free_database_slots, reef.placeable_slots)
    assert counts == (1, 3, 2, 2)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_non_staff_are_sent_to_login(client, model):
    client.force_login(make_user())
    response = client.get(_url(model, "changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_anonymous_is_sent_to_login(client):
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def _bulk_instances(count, cell):
    owner = make_user()
    Instance.objects.bulk_create(
        [
            Instance(
                name=f"bulk-{i:05d}", owner=owner, region=cell["reef"].region, reef=cell["reef"],
                database_pool=cell["database"], compute_pool=cell["compute"], server_version="2026.4.1",
                state="running", hostname=f"bulk-{i:05d}.cells.localhost",
            )
            for i in range(count)
        ],
        batch_size=2000,
    )


@pytest.mark.slow
def test_instance_list_of_ten_thousand_runs_a_constant_number_of_queries(
    staff_client, django_assert_max_num_queries
):
    cell = make_cell(make_reef(max_instances=10_000), capacity=10_000)  # the database refuses an over-full reef
    _bulk_instances(10_000, cell)
    assert Instance.objects.count() == 10_000
    url = _url(Instance, "changelist")
    staff_client.get(url)  # warm the session and permission caches
    with django_assert_max_num_queries(12) as ten_thousand:
        response = staff_client.get(url)
    assert response.status_code == 200 and "bulk-09999" in response.content.decode()
    with django_assert_max_num_queries(12) as filtered:
        assert staff_client.get(url, {"state__exact": "running", "q": "bulk"}).status_code == 200
    assert len(filtered.captured_queries) <= len(ten_thousand.captured_queries) + 1


def test_pool_and_reef_lists_do_not_grow_with_the_fleet(staff_client, django_assert_num_queries):
    make_cell()
    staff_client.get(_url(Pool, "changelist"))
    with CaptureQueriesContext(connection) as few:
        staff_client.get(_url(Pool, "changelist"))
        staff_client.get(_url(Reef, "changelist"))
    for _ in range(5):
        make_cell()
    with django_assert_num_queries(len(few.captured_queries)):
        staff_client.get(_url(Pool, "changelist"))
        staff_client.get(_url(Reef, "changelist"))


def test_topology_admin_actions_are_audited_with_their_outcome(staff_client):
    from cells.models import AuditEvent

    cell = make_cell()
    reef = cell["reef"]
    staff_client.post(_url(Reef, "changelist"), {"action": "drain", "_selected_action": [reef.pk]}, follow=True)
    staff_client.post(_url(Reef, "changelist"), {"action": "drain", "_selected_action": [reef.pk]}, follow=True)
    outcomes = list(AuditEvent.objects.filter(action="reef.drain").order_by("pk").values_list("outcome", flat=True))
    assert outcomes == ["succeeded", "refused"]  # the second drain is refused: the reef is draining already


def test_status_of_existing_topology_changes_only_through_actions(staff_client):
    cell = make_cell()
    for model, obj in [(Reef, cell["reef"]), (Pool, cell["storage"]), (Region, cell["reef"].region)]:
        form = staff_client.get(_url(model, "change", obj.pk)).context["adminform"].form
        assert "status" not in form.fields, model
    assert "status" in staff_client.get(_url(Pool, "add")).context["adminform"].form.fields


@pytest.mark.parametrize("count", [30, 300])
def test_instance_list_counts_and_filters_nothing_over_the_fleet(staff_client, count):
    from django.db import connection as db

    cell = make_cell(make_reef(max_instances=count), capacity=count)
    _bulk_instances(count, cell)
    with db.cursor() as cursor:
        cursor.execute("ANALYZE cells_instance")
    url = _url(Instance, "changelist")
    staff_client.get(url)
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get(url)
    assert response.status_code == 200
    fleet_wide = [q["sql"] for q in queries.captured_queries
                  if 'FROM "cells_instance"' in q["sql"] and ("COUNT(" in q["sql"] or "DISTINCT" in q["sql"])]
    # The small fleet is counted exactly; the large one estimated from pg_class; no DISTINCT for the filters.
    assert len(fleet_wide) == (1 if count < 10_000 else 0), fleet_wide
    assert not any("DISTINCT" in sql for sql in fleet_wide)
    assert any("pg_class" in q["sql"] for q in queries.captured_queries) or count < 10_000


def test_the_estimated_count_is_used_above_the_threshold(staff_client, monkeypatch):
    from portal.admin.instances import EstimatedCountPaginator

    monkeypatch.setattr(EstimatedCountPaginator, "EXACT_BELOW", 100)
    cell = make_cell(make_reef(max_instances=500), capacity=500)
    _bulk_instances(500, cell)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE cells_instance")
    url = _url(Instance, "changelist")
    staff_client.get(url)
    with CaptureQueriesContext(connection) as queries:
        assert staff_client.get(url).status_code == 200
    sqls = [q["sql"] for q in queries.captured_queries]
    assert not [s for s in sqls if 'FROM "cells_instance"' in s and "COUNT(" in s], sqls
    assert any("pg_class" in s for s in sqls)
    with CaptureQueriesContext(connection) as filtered:  # a filtered list is counted exactly
        assert staff_client.get(url, {"state__exact": "running"}).status_code == 200
    assert [q for q in filtered.captured_queries if "COUNT(" in q["sql"]]


def test_instance_list_queries_do_not_grow_with_the_rows_shown(staff_client, django_assert_num_queries):
    """Each row's owner, region, reef and the reef's region come with the page's one query: no query per row."""
    def some(count):
        for _ in range(count):
            cell = make_cell(capacity=1)
            make_instance(reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"])

    some(2)
    url = _url(Instance, "changelist")
    staff_client.get(url)  # warm the session and permission caches
    with CaptureQueriesContext(connection) as two:
        assert staff_client.get(url).status_code == 200
    some(18)
    with django_assert_num_queries(len(two.captured_queries)):
        page = staff_client.get(url).content.decode()
    assert page.count('name="_selected_action"') == 20


def test_the_row_checkbox_is_djangos_markup(fleet):
    """The list's checkbox, written by hand for speed, is what Django's own widget renders (its actions script and
    the action POST read the name, value and class)."""
    from django.contrib import admin
    from django.contrib.admin import ModelAdmin

    instance = fleet[Instance]
    instance.name = 'odd <"name">'  # escaped alike
    model_admin = admin.site._registry[Instance]
    assert model_admin.action_checkbox(instance) == ModelAdmin.action_checkbox(model_admin, instance)


def test_rows_selected_on_the_rendered_list_take_an_action(staff_client):
    """The checkboxes the page renders carry what the admin's action handling reads: posting the values of two of
    them with an action runs it on those two instances and no other."""
    import re

    cell = make_cell(capacity=3)
    instances = [make_instance(reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"])
                 for _ in range(3)]
    url = _url(Instance, "changelist")
    page = staff_client.get(url).content.decode()
    boxes = re.findall(r'<input type="checkbox" name="(_selected_action)" value="(\d+)" class="action-select" '
                       r'aria-label="Select this object for an action - ([^"]+)">', page)
    assert sorted(int(value) for _, value, _ in boxes) == sorted(i.pk for i in instances)
    chosen = [value for _, value, label in boxes if label != instances[0].name]
    response = staff_client.post(url, {"action": "pin_version", "_selected_action": chosen}, follow=True)
    assert response.status_code == 200
    pinned = set(Instance.objects.filter(version_pinned=True).values_list("pk", flat=True))
    assert pinned == {i.pk for i in instances[1:]}
