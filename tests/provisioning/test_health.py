"""Health checks on the local drivers: an unhealthy deployment is restarted through its driver, a persistently
failing one is flagged for staff after the bounded restarts, and the history shows in the admin and to the customer."""
import shutil
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.utils import timezone

from cells.choices import InstanceState, OperationKind
from cells.models import AuditEvent, Operation
from provisioning import drivers
from provisioning.health import health_check_pass, instance_health_check
from provisioning.models import HealthAction, HealthCheck, HealthStatus, InstanceHealth
from tests.factories import make_cell, make_user
from tests.provisioning import test_backups as shared
from tests.provisioning.test_backups import signup

pytestmark = pytest.mark.django_db
run = shared.run  # the shared fixture: a service call and what its commit enqueues, inline


@pytest.fixture
def instance(run, settings):
    settings.CELLHUB = {**settings.CELLHUB, "HEALTH_RESTART_ATTEMPTS": 2, "HEALTH_RESTART_BACKOFF_SECONDS": 60}
    return signup(run, make_cell(capacity=3), name="acme")


def _compute(instance):
    return drivers.for_pool(instance.compute_pool)


def _break(instance):
    """The deployment disappears (its manifests deleted), as if someone removed its namespace."""
    shutil.rmtree(_compute(instance).manifest_path(instance).parent)
    assert not _compute(instance).status(instance=instance).exists


def test_a_healthy_instance_is_recorded_and_left_alone(instance):
    check = instance_health_check(instance=instance)
    assert (check.status, check.action) == (HealthStatus.HEALTHY, HealthAction.NONE)
    assert check.detail == "1 of 1 replicas ready" and check.details["image"].endswith(":2026.4.1")
    health = InstanceHealth.objects.get(instance=instance)
    assert health.status == HealthStatus.HEALTHY and health.restart_attempts == 0 and health.flagged_at is None
    assert not AuditEvent.objects.filter(action="instance.restart").exists()

    # Checked again and found the same: the current health says so; the history, which keeps changes, does not grow.
    again = instance_health_check(instance=instance, now=check.checked_at + timedelta(minutes=5))
    assert (again.status, again.action, again.pk) == (HealthStatus.HEALTHY, HealthAction.NONE, None)
    assert list(HealthCheck.objects.filter(instance=instance)) == [check]
    health = InstanceHealth.objects.get(instance=instance)
    assert (health.since, health.checked_at) == (check.checked_at, check.checked_at + timedelta(minutes=5))


def test_a_missing_deployment_is_restarted_by_the_check(instance):
    _break(instance)
    check = instance_health_check(instance=instance)
    assert (check.status, check.action) == (HealthStatus.UNHEALTHY, HealthAction.RESTARTED)
    assert check.detail == "its deployment is missing; restarted (1 of 2)"
    status = _compute(instance).status(instance=instance)
    assert status.exists and status.replicas == 1 and status.image.endswith(f":{instance.server_version}")
    (restart,) = AuditEvent.objects.filter(action="instance.restart")
    assert (restart.actor_kind, restart.outcome, restart.target_id) == ("scheduler", "succeeded", str(instance.pk))

    again = instance_health_check(instance=instance)
    assert (again.status, again.action) == (HealthStatus.HEALTHY, HealthAction.RECOVERED)
    assert InstanceHealth.objects.get(instance=instance).restart_attempts == 0


def test_a_deployment_scaled_to_zero_is_scaled_down_and_deployed_again(instance):
    _compute(instance).scale(instance=instance, replicas=0)
    _compute(instance).set_image(instance=instance, image="ghcr.io/cellhub/server:2020.1.1")
    check = instance_health_check(instance=instance)
    assert check.status == HealthStatus.UNHEALTHY and check.action == HealthAction.RESTARTED
    assert "scaled to 0 replicas" in check.detail and "not version 2026.4.1" in check.detail
    documents = _compute(instance).read_manifests(instance)
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":2026.4.1")
    assert any(d["kind"] == "Secret" for d in documents)  # deployed whole, with its database secret


def test_a_persistently_failing_instance_is_flagged_after_the_bounded_restarts(instance, client):
    staff = make_user(is_staff=True, email="oncall@example.com")
    start = timezone.now()
    actions = []
    for seconds in (0, 30, 61, 100, 61 + 121, 61 + 121 + 300):
        if _compute(instance).status(instance=instance).exists:
            _break(instance)  # whatever the restarts do, it fails again
        check = instance_health_check(instance=instance, now=start + timedelta(seconds=seconds))
        actions.append(check.action)
    assert actions == [
        HealthAction.RESTARTED,  # restart 1 of 2 at once
        HealthAction.WAITING,  # 30 s later: the next restart waits 60 s
        HealthAction.RESTARTED,  # restart 2 of 2
        HealthAction.WAITING,  # the third would wait 120 s
        HealthAction.FLAGGED,  # restarts spent and still unhealthy: flagged
        HealthAction.NONE,  # flagged: no more restarts until staff clear the flag
    ]
    assert not _compute(instance).status(instance=instance).exists  # nothing restarted it after the flag
    health = InstanceHealth.objects.get(instance=instance)
    assert health.flagged_at == start + timedelta(seconds=182)
    assert "its deployment is missing; 2 restart(s) did not help" in health.flag_reason
    (message,) = [message for message in mail.outbox if "flagged" in message.subject]
    assert message.to == [staff.email] and "acme is unhealthy and was flagged" in message.subject
    assert AuditEvent.objects.filter(action="instance.restart", outcome="succeeded").count() == 2
    assert AuditEvent.objects.filter(action="instance.flag", target_id=str(instance.pk)).count() == 1

    # Staff see it among the flagged, clear the flag (audited), and the next check restarts it again.
    admin = make_user(is_staff=True, is_superuser=True)
    client.force_login(admin)
    flagged = client.get("/admin/provisioning/instancehealth/", {"flagged": "yes"})
    assert [row.instance for row in flagged.context["cl"].result_list] == [instance]
    response = client.post("/admin/provisioning/instancehealth/", {
        "action": "clear_flag", "_selected_action": [instance.pk], "apply": "1", "reason": "disk replaced",
    })
    assert response.status_code == 302
    (cleared,) = AuditEvent.objects.filter(action="instance.health_flag_clear")
    assert cleared.actor == admin and cleared.reason == "disk replaced"
    check = instance_health_check(instance=instance, now=start + timedelta(seconds=1000))
    assert check.action == HealthAction.RESTARTED and _compute(instance).status(instance=instance).exists


class _HealthEndpoint(BaseHTTPRequestHandler):
    answers: list[int] = []

    def do_GET(self):  # noqa: N802 (the standard library's name)
        code = self.answers.pop(0) if self.answers else 200
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_the_http_check_asks_the_instance_itself(instance, settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings.CELLHUB = {**settings.CELLHUB, "HEALTH_HTTP": True}
        pool = instance.compute_pool
        pool.config = {"health_url": f"http://127.0.0.1:{server.server_port}/{{hostname}}/api/health"}
        pool.save(update_fields=["config"])
        instance.refresh_from_db()
        _HealthEndpoint.answers = [503]
        check = instance_health_check(instance=instance)
        assert check.status == HealthStatus.UNHEALTHY and check.action == HealthAction.RESTARTED
        assert check.detail.startswith(f"http://127.0.0.1:{server.server_port}/acme.cells.localhost/api/health "
                                       "answered 503")
        check = instance_health_check(instance=instance)
        assert check.status == HealthStatus.HEALTHY and check.details["http_status"] == 200
    finally:
        server.shutdown()


def test_the_pass_checks_running_instances_skips_busy_ones_and_forgets_old_checks(instance, run, settings):
    other = signup(run, make_cell(capacity=2), name="busy")
    Operation.objects.create(kind=OperationKind.BACKUP, instance=other)  # queued: its deployment may change
    old = HealthCheck.objects.create(instance=instance, status=HealthStatus.HEALTHY,
                                     checked_at=timezone.now() - timedelta(days=30))
    _break(instance)
    counts = health_check_pass()
    assert counts == {"unhealthy": 1, "restarted": 1, "pruned": 1}
    assert not HealthCheck.objects.filter(pk=old.pk).exists()
    assert not HealthCheck.objects.filter(instance=other).exists()
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING


def test_history_is_shown_to_staff_and_to_the_customer(instance, client, staff_client):
    instance_health_check(instance=instance)
    _break(instance)
    instance_health_check(instance=instance)

    page = staff_client.get(f"/admin/cells/instance/{instance.pk}/change/").content.decode()
    assert 'data-role="health-checks"' in page
    assert "its deployment is missing; restarted (1 of 2)" in page and "1 of 1 replicas ready" in page
    assert staff_client.get("/admin/provisioning/healthcheck/").status_code == 200

    client.force_login(instance.owner)
    page = client.get("/instances/acme/").content.decode()
    assert 'id="health"' in page and "Not responding: restarted automatically" in page and "Healthy" in page
    since = InstanceHealth.objects.get(instance=instance).since
    now = "Not responding: restarted automatically"
    assert f'<strong data-role="health-now">{now}</strong> since {since:%Y-%m-%d %H:%M:%S} UTC' in page
    assert "deployment is missing" not in page  # internal detail stays with staff
