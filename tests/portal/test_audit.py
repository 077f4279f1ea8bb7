"""The audit log: a row for each kind of action — staff in the admin, customers on the site, API calls, operation
start and end, credential reveals, and refusals — with actor, time, target and outcome; read-only everywhere."""
import pytest
from django.db import IntegrityError, transaction

from cells.audit import audit_record
from cells.choices import InstanceState
from cells.models import AuditEvent, Instance, Operation
from provisioning import drivers, faults
from tests.factories import make_cell, make_instance, make_user
from tests.portal.api.conftest import token_client
from tests.provisioning import test_backups as shared
from tests.provisioning.test_backups import signup

pytestmark = pytest.mark.django_db
run = shared.run
backup_key = shared.backup_key


@pytest.fixture
def acme(run):
    return signup(run, make_cell(capacity=3), name="acme")


def _rows(action, **filters):
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("id"))


def test_staff_admin_actions_and_their_refusals(staff_client, staff_user, acme):
    pending = make_instance(name="notyet", state=InstanceState.PENDING)
    response = staff_client.post("/admin/cells/instance/", {
        "action": "back_up_now", "_selected_action": [acme.pk, pending.pk],
    })
    assert response.status_code == 302
    done, refused = (_rows("instance.backup", outcome=outcome) for outcome in ("succeeded", "refused"))
    assert [(row.target_id, row.actor, row.actor_kind, row.address) for row in done] == [
        (str(acme.pk), staff_user, "staff", "127.0.0.1"),
    ]
    assert done[0].details["via"] == "admin" and done[0].details["operation"]
    assert done[0].actor_label == f"{staff_user.username} <{staff_user.email}>" and done[0].at
    assert [row.target_id for row in refused] == [str(pending.pk)]
    assert "notyet is pending" in refused[0].reason


def test_customer_site_actions_and_refusals(client, acme):
    client.force_login(acme.owner)
    assert client.post("/instances/acme/backups/").status_code == 302
    assert client.post("/instances/acme/decommission/", {"confirm_name": "not-acme"}).status_code == 400
    (backup,) = _rows("instance.backup")
    assert (backup.actor, backup.actor_kind, backup.outcome, backup.target_label) == (
        acme.owner, "customer", "succeeded", "acme"
    )
    assert backup.details["via"] == "site"
    (decommission,) = _rows("instance.decommission")
    assert decommission.outcome == "refused" and "acme" in decommission.reason
    assert decommission.details["confirm_name"] == "not-acme"


def test_signups_on_the_site_are_audited_without_the_password(client, acme):
    region = acme.region
    taken = client.post("/signup/", {"email": "new@example.com", "password": "a-long-enough-passphrase",
                                     "name": "acme", "region": region.pk})
    assert taken.status_code == 400
    (refused,) = _rows("instance.signup")
    assert (refused.actor, refused.actor_kind, refused.outcome, refused.target_label) == (
        None, "customer", "refused", "acme"
    )
    assert "taken" in refused.reason and "password" not in refused.details
    assert "a-long-enough-passphrase" not in str(refused.details)


def test_api_actions_refusals_and_read_only_staff(acme):
    owner = token_client(acme.owner)
    response = owner.post("/api/v1/instances/acme/stop/")
    assert response.status_code == 202
    again = owner.post("/api/v1/instances/acme/stop/")
    assert again.status_code == 409
    readonly = make_user(is_staff=True)
    from django.contrib.auth.models import Group

    from portal.roles import READ_ONLY_STAFF_GROUP

    readonly.groups.add(Group.objects.get(name=READ_ONLY_STAFF_GROUP))
    assert token_client(readonly).post("/api/v1/instances/acme/start/").status_code == 403
    assert owner.get("/api/v1/instances/acme/").status_code == 200  # reads are not audited

    stop = _rows("instance.stop")
    assert [(row.actor, row.actor_kind, row.outcome, row.target_id) for row in stop] == [
        (acme.owner, "api_token", "succeeded", str(acme.pk)), (acme.owner, "api_token", "refused", str(acme.pk)),
    ]
    assert stop[0].details["operation"] == response.json()["id"] and stop[0].details["status"] == 202
    assert "already queued" in stop[1].reason and stop[1].details["status"] == 409
    (start,) = _rows("instance.start")
    assert (start.actor, start.outcome) == (readonly, "refused") and "Read-only staff" in start.reason
    assert len(AuditEvent.objects.filter(details__via="api")) == 3


def test_operation_start_and_end_are_audited(run, acme):
    (provision,) = Operation.objects.filter(instance=acme)
    actions = [(row.action, row.outcome, row.actor_kind) for row in AuditEvent.objects.filter(
        target_type="operation", target_id=str(provision.pk)).order_by("id")]
    assert actions == [
        ("operation.create", "succeeded", "customer"), ("operation.start", "succeeded", "scheduler"),
        ("operation.end", "succeeded", "scheduler"),
    ]
    faults.arm("stop.scale to zero.before", "permanent")
    from provisioning.lifecycle import instance_stop

    stop = run(instance_stop, instance=acme)
    (end,) = _rows("operation.end", target_id=str(stop.pk))
    assert end.outcome == "failed" and end.reason.startswith("PermanentDriverError: injected permanent fault")
    assert end.details["state"] == "failed" and end.target_label == f"stop #{stop.pk} of instance acme"


def test_a_credential_reveal_is_audited_and_shown_once(staff_client, staff_user, acme):
    url = "/admin/cells/instance/"
    page = staff_client.post(url, {"action": "reveal_credentials", "_selected_action": [acme.pk]})
    assert page.status_code == 200 and b"audit log with your name and reason" in page.content
    assert not _rows("credentials.reveal")  # asking is not revealing
    shown = staff_client.post(url, {"action": "reveal_credentials", "_selected_action": [acme.pk], "apply": "1",
                                    "reason": "customer support ticket 4711"})
    secret = drivers.for_pool(acme.database_pool).credentials(acme).url
    assert shown.status_code == 200 and secret in shown.content.decode()
    assert "no-store" in shown["Cache-Control"]
    (reveal,) = _rows("credentials.reveal")
    assert (reveal.actor, reveal.outcome, reveal.reason) == (staff_user, "succeeded", "customer support ticket 4711")

    api = token_client(staff_user).post("/api/v1/instances/acme/reveal-credentials/", {"reason": "migration"},
                                        format="json")
    assert api.status_code == 200 and api.json()["url"] == secret and api["Cache-Control"] == "no-store"
    customer = token_client(acme.owner).post("/api/v1/instances/acme/reveal-credentials/", {"reason": "mine"},
                                             format="json")
    assert customer.status_code == 403
    rows = _rows("credentials.reveal")
    assert [(row.actor, row.actor_kind, row.outcome) for row in rows] == [
        (staff_user, "staff", "succeeded"), (staff_user, "api_token", "succeeded"),
        (acme.owner, "api_token", "refused"),
    ]
    for row in AuditEvent.objects.all():  # the secret itself is never written down
        assert secret not in f"{row.reason} {row.details}"


def test_the_log_is_read_only_filterable_and_outlives_its_actors(staff_client, acme):
    gone = make_user()
    token_client(gone).post("/api/v1/instances/acme/stop/")  # refused: not their instance (404)
    refused = AuditEvent.objects.get(actor=gone)
    assert refused.outcome == "refused" and refused.target_label == "acme"

    listing = staff_client.get("/admin/cells/auditevent/", {"outcome": "refused"})
    assert listing.status_code == 200
    assert [row.pk for row in listing.context["cl"].result_list] == [refused.pk]
    assert staff_client.get("/admin/cells/auditevent/", {"actor_kind": "scheduler"}).status_code == 200
    assert staff_client.get(f"/admin/cells/auditevent/{refused.pk}/change/").status_code == 200
    assert staff_client.get("/admin/cells/auditevent/add/").status_code == 403
    assert staff_client.post(f"/admin/cells/auditevent/{refused.pk}/delete/").status_code == 403

    for change in (lambda: AuditEvent.objects.filter(pk=refused.pk).update(outcome="succeeded"),
                   lambda: AuditEvent.objects.filter(pk=refused.pk).delete()):
        with pytest.raises(IntegrityError, match="audit_append_only"), transaction.atomic():
            change()
    label = refused.actor_label
    gone.delete()  # an account may go; what it did stays, under its name
    refused.refresh_from_db()
    assert refused.actor is None and refused.actor_label == label and refused.outcome == "refused"
    assert Instance.objects.filter(name="acme").exists()


def test_a_nul_character_never_erases_the_trace_of_a_credential_reveal(staff_user, acme):
    """The API refuses a body carrying U+0000 before any work (400 naming the field): nothing is revealed, and the
    refusal is recorded."""
    response = token_client(staff_user).post(
        "/api/v1/instances/acme/reveal-credentials/", {"reason": "ticket 4712", "note": "a\u0000b"}, format="json"
    )
    assert response.status_code == 400 and "note" in response.json()["error"]["fields"]
    assert "url" not in response.json()
    (reveal,) = _rows("credentials.reveal")
    assert reveal.outcome == "refused" and reveal.actor == staff_user


def test_a_nul_character_is_recorded_replaced_never_unrecorded(staff_user, acme):
    """PostgreSQL's JSON and text refuse U+0000; what other doors (forms) pass on is recorded with it replaced."""
    audit_record(action="credentials.reveal", target=acme, actor=staff_user, reason="ticket\u00004712",
                 details={"note": "a\u0000b", "a\u0000key": ["x\u0000"]})
    (reveal,) = _rows("credentials.reveal")
    assert reveal.outcome == "succeeded" and reveal.reason == "ticket\ufffd4712"
    assert reveal.details["note"] == "a\ufffdb" and reveal.details["a\ufffdkey"] == ["x\ufffd"]


def test_an_audit_row_that_cannot_be_written_takes_the_action_with_it(acme, staff_user):
    """The row is written in the action's transaction: if it fails, the action is undone too (never done unseen)."""
    with pytest.raises(IntegrityError), transaction.atomic():
        Instance.objects.filter(pk=acme.pk).update(state=InstanceState.STOPPED)
        audit_record(action="instance.stop", target=acme, actor=staff_user, outcome="bogus")
    acme.refresh_from_db()
    assert acme.state == InstanceState.RUNNING
    assert not _rows("instance.stop")
