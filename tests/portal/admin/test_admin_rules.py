"""Staff keep the rules the rest of the hub keeps: instances come only from signup and end only by decommission,
what the lifecycle decided (the name above all) is read-only, every admin change is audited, a retry says what it
did, and deleting the databases a restore replaced asks first on a page styled as destructive."""
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.utils import timezone

from cells.choices import OperationState
from cells.models import AuditEvent, Instance, Operation, Region
from portal.admin.audit import AuditedModelAdmin
from provisioning.models import Backup, Restore
from tests.factories import make_cell, make_instance

pytestmark = pytest.mark.django_db
INSTANCES = "/admin/cells/instance/"


@pytest.fixture
def instance():
    cell = make_cell(capacity=2)
    return make_instance(reef=cell["reef"], database_pool=cell["database"], compute_pool=cell["compute"],
                         hostname="acme.cells.localhost", name="acme")


def test_every_registered_admin_is_audited():
    unaudited = [model.__name__ for model, model_admin in admin.site._registry.items()
                 if not isinstance(model_admin, AuditedModelAdmin)]
    assert unaudited == []
    assert get_user_model() in admin.site._registry  # third-party admins are covered too, not dropped


def test_the_admin_cannot_create_an_instance(staff_client, instance):
    assert staff_client.get(f"{INSTANCES}add/").status_code == 403
    response = staff_client.post(f"{INSTANCES}add/", {"name": "sneaky", "owner": instance.owner.pk,
                                                       "region": instance.region.pk, "server_version": "1"})
    assert response.status_code == 403 and Instance.objects.count() == 1
    assert f'href="{INSTANCES}add/"' not in staff_client.get(INSTANCES).content.decode()


def test_the_admin_cannot_delete_an_instance(staff_client, instance):
    assert staff_client.post(f"{INSTANCES}{instance.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Instance.objects.filter(pk=instance.pk).exists()


def _change_form_data(client, url) -> dict:
    """What the change page would post back unchanged: its form's and inlines' current values."""
    page = client.get(url)
    assert page.status_code == 200
    data = {}
    form = page.context["adminform"].form
    for name in form.fields:
        value = form[name].value()
        data[name] = "" if value is None else value
    for inline in page.context["inline_admin_formsets"]:
        management = inline.formset.management_form
        for name in management.fields:
            data[f"{management.prefix}-{name}"] = management[name].value()
    return data


def test_the_name_and_placement_cannot_be_changed_and_changes_are_audited(staff_client, instance):
    url = f"{INSTANCES}{instance.pk}/change/"
    page = staff_client.get(url).content.decode()
    assert 'name="name"' not in page and 'name="hostname"' not in page and 'name="region"' not in page
    data = _change_form_data(staff_client, url)
    data.update({"name": "renamed", "hostname": "renamed.cells.localhost", "cpu_millicores": 750})
    response = staff_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    instance.refresh_from_db()
    assert (instance.name, instance.hostname, instance.cpu_millicores) == ("acme", "acme.cells.localhost", 750)
    event = AuditEvent.objects.get(action="instance.change")
    assert event.target_id == str(instance.pk) and event.details["via"] == "admin"
    assert "Cpu millicores" in str(event.details["changes"]) and event.actor.is_staff


def test_admin_add_change_and_delete_of_a_region_and_a_group_are_audited(staff_client):
    response = staff_client.post("/admin/cells/region/add/", {"slug": "mars-1", "name": "Mars 1", "cloud": "local",
                                                               "location": "mars", "status": "active",
                                                               "maintenance_weekday": 6, "maintenance_hour": 2})
    assert response.status_code == 302, response.content.decode()[:3000]
    region = Region.objects.get(slug="mars-1")
    data = _change_form_data(staff_client, f"/admin/cells/region/{region.pk}/change/")
    staff_client.post(f"/admin/cells/region/{region.pk}/change/", {**data, "name": "Mars One"})
    staff_client.post(f"/admin/cells/region/{region.pk}/delete/", {"post": "yes"})
    assert not Region.objects.filter(slug="mars-1").exists()
    events = AuditEvent.objects.filter(target_type="region").order_by("at", "id")
    actions = list(events.values_list("action", flat=True))
    assert actions == ["region.add", "region.change", "region.delete"]

    # A third-party admin (Django's groups) is audited the same way.
    assert staff_client.post("/admin/auth/group/add/", {"name": "support"}).status_code == 302
    assert AuditEvent.objects.filter(action="group.add", target_label="support").exists()


def _retry(client, *operations):
    return client.post("/admin/cells/operation/", {
        "action": "retry", "_selected_action": [op.pk for op in operations]}, follow=True)


def test_retrying_one_failed_operation_says_one_true_thing_and_audits_it_once(staff_client, instance):
    failed = Operation.objects.create(kind="provision", instance=instance, state=OperationState.FAILED, error="boom")
    response = _retry(staff_client, failed)
    messages = [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]
    assert messages == [("success", f"Queued again: #{failed.pk}.")]
    failed.refresh_from_db()
    assert failed.state == OperationState.QUEUED
    events = list(AuditEvent.objects.filter(action="operation.retry").values_list("target_id", "outcome"))
    assert events == [(str(failed.pk), "succeeded")]


def test_retrying_a_mixed_selection_reports_each_truthfully(staff_client, instance):
    failed = Operation.objects.create(kind="provision", instance=instance, state=OperationState.FAILED)
    done = Operation.objects.create(kind="backup", instance=instance, state=OperationState.SUCCEEDED)
    response = _retry(staff_client, failed, done)
    messages = [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]
    assert messages == [("success", f"Queued again: #{failed.pk}."),
                        ("warning", f"Not retried: operation #{done.pk} is succeeded, neither failed nor cancelled.")]
    events = dict(AuditEvent.objects.filter(action="operation.retry").values_list("target_id", "outcome"))
    assert events == {str(failed.pk): "succeeded", str(done.pk): "refused"}


@pytest.fixture
def kept_restore(instance):
    backup = Backup.objects.create(instance=instance, kind="database", pool=instance.database_pool,
                                   state="succeeded", taken_at=timezone.now(), finished_at=timezone.now(),
                                   location="file:///nowhere/backup")
    return Restore.objects.create(
        instance=instance, kind="database", state="succeeded", backup=backup, point_in_time=timezone.now(),
        new_database="acme_r1", old_database="acme_previous", keep_old_until=timezone.now() + timedelta(days=7),
    )


def test_deleting_the_replaced_database_asks_first_on_a_destructive_page(staff_client, instance, kept_restore):
    page = staff_client.post(INSTANCES, {"action": "confirm_restore", "_selected_action": [instance.pk]})
    html = page.content.decode()
    assert page.status_code == 200 and "acme_previous" in html and "deletes databases for good" in html
    assert 'class="default destructive"' in html
    kept_restore.refresh_from_db()
    assert kept_restore.old_dropped_at is None  # nothing happened yet

    # Applying without ticking the confirmation deletes nothing either.
    again = staff_client.post(INSTANCES, {"action": "confirm_restore", "_selected_action": [instance.pk],
                                          "apply": "1"})
    assert again.status_code == 200 and "Tick the box" in again.content.decode()
    kept_restore.refresh_from_db()
    assert kept_restore.old_dropped_at is None
    assert not AuditEvent.objects.filter(action="instance.restore_confirm").exists()

    staff_client.post(INSTANCES, {"action": "confirm_restore", "_selected_action": [instance.pk], "apply": "1",
                                  "confirm": "on"})
    kept_restore.refresh_from_db()
    assert kept_restore.old_dropped_at is not None
    assert AuditEvent.objects.get(action="instance.restore_confirm").outcome == "succeeded"
