"""Backups, restore and decommission from the customer's instance page and from the staff admin."""
import html
from datetime import timedelta

import pytest
from django.urls import reverse

from cells.choices import InstanceState, OperationKind, OperationState
from cells.models import Operation
from provisioning.backups import restorable_window
from provisioning.models import Backup, BackupKind, Restore
from tests.factories import make_user
from tests.provisioning import test_backups as shared
from tests.provisioning.test_backups import (
    back_up,
    share_path,
    signup,
    sqlite_file,
    sqlite_write,
    write_files,
)

pytestmark = pytest.mark.django_db
# Fixtures shared with the backup tests (pytest finds them by name in this module).
backup_key = shared.backup_key
run = shared.run
sqlite_cell = shared.sqlite_cell
CHANGELIST = "/admin/cells/instance/"


def _stamp(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture
def instance(run, sqlite_cell):
    return signup(run, sqlite_cell)


@pytest.fixture
def owner(client, instance):
    client.force_login(instance.owner)
    return client


def test_the_page_shows_backups_the_window_and_the_actions(owner, run, instance):
    page = owner.get("/instances/acme/").content.decode()
    assert "No backups yet." in page and "nothing to restore yet" in page and "Back up now" in page
    back_up(run, instance, BackupKind.DATABASE, BackupKind.FILES)
    start, end = restorable_window(instance=instance)
    page = owner.get("/instances/acme/").content.decode()
    assert f'min="{_stamp(start)}"' in page and f'max="{_stamp(end)}"' in page and 'type="datetime-local"' in page
    assert "latest database backup taken at or before that time" in page and "Restore these files" in page
    assert page.count("<td>Database</td>") == 1 and page.count("<td>Files</td>") == 1
    assert "Type <strong>acme</strong> to confirm" in page


def test_back_up_now_backs_up_database_and_files(owner, run, instance):
    response = run(owner.post, "/instances/acme/backups/")
    assert response.status_code == 302 and response["Location"] == "/instances/acme/"
    assert sorted(Backup.objects.filter(instance=instance, state="succeeded").values_list("kind", flat=True)) == [
        "database", "files"
    ]
    assert "A backup of acme is on its way." in owner.get("/instances/acme/").content.decode()


@pytest.mark.parametrize(
    "path,data",
    [
        ("/instances/acme/", None),
        ("/instances/acme/backups/", {}),
        ("/instances/acme/restore/", {"point_in_time": "2026-01-01T00:00:00"}),
        ("/instances/acme/restore/files/", {"backup": "1"}),
        ("/instances/acme/restore/confirm/", {}),
        ("/instances/acme/decommission/", {"confirm_name": "acme"}),
    ],
)
def test_only_the_owner_may_act(client, instance, path, data):
    client.force_login(make_user())
    response = client.get(path) if data is None else client.post(path, data)
    assert response.status_code == 404
    client.logout()
    if data is not None:
        assert client.post(path, data).status_code == 302  # to the login page
    assert not Operation.objects.exclude(kind=OperationKind.PROVISION).exists()
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING


def test_a_restore_outside_the_window_is_refused_and_one_inside_restores(owner, run, instance):
    live = sqlite_file(instance)
    sqlite_write(live, "first")
    back_up(run, instance)
    start, end = restorable_window(instance=instance)

    response = owner.post("/instances/acme/restore/", {"point_in_time": _stamp(start - timedelta(days=1))})
    assert response.status_code == 400
    assert "outside the restorable window" in " ".join(response.context["restore_form"].errors["point_in_time"])
    response = owner.post("/instances/acme/restore/", {"point_in_time": "yesterday"})
    assert response.status_code == 400 and "Enter a date and time." in response.content.decode()
    assert not Restore.objects.exists()

    response = run(owner.post, "/instances/acme/restore/", {"point_in_time": _stamp(end)})
    assert response.status_code == 302
    restore = Restore.objects.get()
    assert restore.operation.state == OperationState.SUCCEEDED and restore.keeps_old_database
    page = owner.get("/instances/acme/").content.decode()
    assert "as it was before the restore of" in page
    assert "Delete the previous database now" in page and "button danger" in page

    # The link asks first, on a page of its own styled as destructive; asking deletes nothing.
    ask = owner.get("/instances/acme/restore/confirm/").content.decode()
    assert "cannot be undone" in ask and 'class="danger"' in ask and live.exists()

    response = owner.post("/instances/acme/restore/confirm/")
    assert response.status_code == 302 and not live.exists()
    response = owner.post("/instances/acme/restore/confirm/", follow=True)  # refused: redirected back (PRG)
    assert response.redirect_chain == [("/instances/acme/", 302)]
    assert "nothing to confirm" in response.content.decode()


def test_files_are_restored_from_the_page_and_a_foreign_backup_is_refused(owner, run, instance, sqlite_cell):
    write_files(share_path(instance), {"a.txt": b"one"})
    backup = Backup.objects.get(operation=back_up(run, instance, BackupKind.FILES))
    (share_path(instance) / "a.txt").write_bytes(b"changed")

    response = run(owner.post, "/instances/acme/restore/files/", {"backup": backup.pk})
    assert response.status_code == 302
    assert (share_path(instance) / "a.txt").read_bytes() == b"one"

    other = signup(run, sqlite_cell, "other")
    theirs = Backup.objects.get(operation=back_up(run, other, BackupKind.FILES))
    response = owner.post("/instances/acme/restore/files/", {"backup": theirs.pk})
    assert response.status_code == 400
    assert "not one of this instance's files backups" in html.unescape(response.content.decode())
    assert Restore.objects.count() == 1


def test_decommission_from_the_page_needs_the_name(owner, run, instance):
    response = owner.post("/instances/acme/decommission/", {"confirm_name": "acme-typo"})
    assert response.status_code == 400
    assert "type the instance's name, acme, to confirm" in html.unescape(response.content.decode())
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING

    response = run(owner.post, "/instances/acme/decommission/", {"confirm_name": "acme"})
    assert response.status_code == 302
    instance.refresh_from_db()
    assert instance.state == InstanceState.DECOMMISSIONED
    page = owner.get("/instances/acme/").content.decode()
    assert "was decommissioned" in page and "Back up now" not in page and "Type <strong>" not in page

    response = owner.post("/instances/acme/backups/", follow=True)  # refused: redirected back (PRG)
    assert response.redirect_chain == [("/instances/acme/", 302)]
    assert "is decommissioned;" in response.content.decode()


# ---- staff admin -------------------------------------------------------------------------------------


def _action(staff_client, action, instance, **data):
    return staff_client.post(CHANGELIST, {"action": action, "_selected_action": [instance.pk], **data}, follow=True)


def test_admin_back_up_now(staff_client, run, instance):
    response = run(_action, staff_client, "back_up_now", instance)
    assert "Backup queued for acme" in response.content.decode()
    assert Backup.objects.filter(instance=instance, state="succeeded").count() == 2
    listing = staff_client.get(reverse("admin:provisioning_backup_changelist"), {"kind__exact": "files"})
    assert listing.status_code == 200 and [b.kind for b in listing.context["cl"].result_list] == ["files"]
    backup = Backup.objects.first()
    assert staff_client.get(reverse("admin:provisioning_backup_change", args=[backup.pk])).status_code == 200
    assert staff_client.get(reverse("admin:provisioning_backup_add")).status_code == 403


def test_admin_restore_page_limits_the_time_to_the_window(staff_client, run, instance):
    back_up(run, instance)
    start, end = restorable_window(instance=instance)
    page = _action(staff_client, "restore_to_point_in_time", instance)
    body = page.content.decode()
    assert page.templates[0].name == "admin/instance_restore.html"
    assert f'min="{_stamp(start)}"' in body and f'max="{_stamp(end)}"' in body and "Restorable window" in body

    refused = _action(staff_client, "restore_to_point_in_time", instance, apply="1",
                      point_in_time=_stamp(end + timedelta(hours=1)))
    assert "outside the restorable window" in refused.content.decode() and not Restore.objects.exists()

    done = run(_action, staff_client, "restore_to_point_in_time", instance, apply="1", point_in_time=_stamp(end))
    assert f"Restore of acme to {end:%Y-%m-%d %H:%M:%S} UTC queued" in done.content.decode()
    assert Restore.objects.get().operation.state == OperationState.SUCCEEDED


def test_admin_restore_files_page(staff_client, run, instance):
    write_files(share_path(instance), {"a.txt": b"one"})
    backup = Backup.objects.get(operation=back_up(run, instance, BackupKind.FILES))
    (share_path(instance) / "a.txt").unlink()
    page = _action(staff_client, "restore_files", instance)
    assert f'value="{backup.pk}"' in page.content.decode()
    done = run(_action, staff_client, "restore_files", instance, apply="1", backup=backup.pk)
    assert "Files restore of acme queued" in done.content.decode()
    assert (share_path(instance) / "a.txt").read_bytes() == b"one"


def test_admin_decommission_needs_the_name_typed(staff_client, run, instance):
    page = _action(staff_client, "decommission", instance)
    assert page.templates[0].name == "admin/instance_decommission.html" and "Type <strong>acme</strong>" in (
        page.content.decode()
    )
    wrong = _action(staff_client, "decommission", instance, apply="1", confirm_name="acme ")
    # Surrounding spaces are forgiven (typing slips); another name is not.
    assert "Decommission of acme queued" in wrong.content.decode()
    instance.refresh_from_db()
    assert instance.state == InstanceState.DECOMMISSIONING


def test_admin_decommission_with_a_wrong_name_changes_nothing(staff_client, run, instance):
    refused = _action(staff_client, "decommission", instance, apply="1", confirm_name="acne")
    assert "type the instance's name, acme, to confirm" in html.unescape(refused.content.decode())
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING and not Operation.objects.filter(kind="decommission").exists()
    done = run(_action, staff_client, "decommission", instance, apply="1", confirm_name="acme")
    assert "Decommission of acme queued" in done.content.decode()
    instance.refresh_from_db()
    assert instance.state == InstanceState.DECOMMISSIONED
    refused = _action(staff_client, "back_up_now", instance)
    assert "Instance acme is decommissioned;" in refused.content.decode()  # the admin capitalises messages
