"""The customer sees the truth, live: stop/start on the site acting on the real process, one "Back up now"
operation, the current step of any operation, failures in plain words (and staff told), refusals redirected."""
import html
import socket

import pytest
from django.core import mail

from cells.choices import InstanceState, OperationKind, OperationState
from cells.models import Operation
from provisioning.models import Backup, BackupState
from provisioning.ports import instance_port
from tests.factories import make_user
from tests.provisioning import test_backups as shared
from tests.provisioning.test_backups import signup

pytestmark = pytest.mark.django_db
backup_key = shared.backup_key
run = shared.run
sqlite_cell = shared.sqlite_cell


@pytest.fixture
def instance(run, sqlite_cell):
    return signup(run, sqlite_cell)


@pytest.fixture
def owner(client, instance):
    client.force_login(instance.owner)
    return client


def _answers(port) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_the_customer_stops_and_starts_the_instance_on_the_site(owner, run, instance):
    port = instance_port(instance)
    page = owner.get("/instances/acme/").content.decode()
    assert f'href="http://acme.cells.localhost:{port}/"' in page and ">Stop</button>" in page

    response = run(owner.post, "/instances/acme/stop/")
    assert response.status_code == 302 and response["Location"] == "/instances/acme/"
    instance.refresh_from_db()
    assert instance.state == InstanceState.STOPPED and not _answers(port)  # the process really stopped
    assert ">Start</button>" in owner.get("/instances/acme/").content.decode()

    # A repeated stop (a reload) is refused and redirected back, changing nothing.
    response = owner.post("/instances/acme/stop/", follow=True)
    assert response.redirect_chain == [("/instances/acme/", 302)]
    assert "stopped" in " ".join(str(m) for m in response.context["messages"])
    assert Operation.objects.filter(kind=OperationKind.STOP).count() == 1

    response = run(owner.post, "/instances/acme/start/")
    assert response.status_code == 302
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING and _answers(port)


def test_others_cannot_stop_it(client, instance):
    client.force_login(make_user())
    assert client.post("/instances/acme/stop/").status_code == 404


def test_back_up_now_is_one_operation_and_its_progress_shows_live(owner, instance):
    response = owner.post("/instances/acme/backups/")  # queued, not run: the worker has not picked it up
    assert response.status_code == 302
    (operation,) = Operation.objects.filter(kind=OperationKind.BACKUP)
    assert operation.params["kinds"] == ["database", "files"]
    status = owner.get("/instances/acme/status.json").json()
    assert status["operation"] == "Backup" and status["progress"]["current"] == "database"
    assert status["progress"]["finished"] is False and status["progress"]["total"] == 2
    assert owner.post("/instances/acme/backups/").status_code == 302  # a second click joins the same operation
    assert Operation.objects.filter(kind=OperationKind.BACKUP).count() == 1


def test_a_failure_shows_its_reason_in_plain_words_and_staff_are_told(owner, run, instance, settings):
    staff = make_user(is_staff=True, email="oncall@example.com")
    settings.CELLHUB = {**settings.CELLHUB, "BACKUP_KEY": ""}
    mail.outbox.clear()
    run(owner.post, "/instances/acme/backups/")
    operation = Operation.objects.get(kind=OperationKind.BACKUP)
    assert operation.state == OperationState.FAILED
    assert Backup.objects.filter(operation=operation, state=BackupState.FAILED).exists()

    status = owner.get("/instances/acme/status.json").json()
    failure = status["progress"]["failure"]
    assert failure.startswith("The backup did not finish at the step “database”: local backups are encrypted with")
    assert "Our support staff have been told" in failure and "BackupKeyError" not in failure
    assert failure in html.unescape(owner.get("/instances/acme/").content.decode())  # on the page as well

    (alert,) = [message for message in mail.outbox if staff.email in message.to]
    assert alert.subject == "[Cell Hub] backup of acme failed at database"
    assert "CELLHUB_BACKUP_KEY" in alert.body and "?state__exact=failed" in alert.body
