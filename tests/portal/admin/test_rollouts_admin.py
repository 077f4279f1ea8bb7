"""Staff drive releases and rollouts from the admin; pinning exempts an instance; the tick is scheduled."""
import pytest
from django_q.models import Schedule

from cells.choices import InstanceState, ReleaseState, RolloutState
from cells.models import AuditEvent, Instance, Release, Rollout
from tests.factories import make_cell, make_instance

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet():
    cell = make_cell()
    for n in range(3):
        make_instance(name=f"adm-{n}", reef=cell["reef"], database_pool=cell["database"],
                      compute_pool=cell["compute"], state=InstanceState.RUNNING, server_version="1.0")
    return Release.objects.create(version="2.0", image="img", state=ReleaseState.DRAFT)


def _act(client, model, action, *pks):
    return client.post(f"/admin/cells/{model}/", {"action": action, "_selected_action": list(pks)}, follow=True)


def test_release_actions_and_starting_a_rollout(staff_client, fleet):
    page = _act(staff_client, "release", "start_rollout", fleet.pk).content.decode()
    assert "is draft" in page and not Rollout.objects.exists()  # a draft cannot be rolled out
    _act(staff_client, "release", "make_available", fleet.pk)
    _act(staff_client, "release", "make_default", fleet.pk)
    assert Release.objects.get(pk=fleet.pk).state == ReleaseState.DEFAULT
    page = _act(staff_client, "release", "start_rollout", fleet.pk).content.decode()
    rollout = Rollout.objects.get()
    assert "Rollout started" in page and rollout.state == RolloutState.RUNNING and rollout.targets.count() == 3
    assert AuditEvent.objects.filter(action="release.start_rollout", outcome="succeeded").exists()


def test_rollout_pause_resume_and_refusals_are_audited(staff_client, fleet):
    from provisioning.rollouts import rollout_create

    Release.objects.filter(pk=fleet.pk).update(state=ReleaseState.AVAILABLE)
    rollout = rollout_create(release=Release.objects.get(pk=fleet.pk))
    page = _act(staff_client, "rollout", "pause", rollout.pk).content.decode()
    assert "is planned" in page  # only a running rollout pauses
    assert AuditEvent.objects.filter(action="rollout.pause", outcome="refused").exists()
    _act(staff_client, "rollout", "start", rollout.pk)
    _act(staff_client, "rollout", "pause", rollout.pk)
    assert Rollout.objects.get(pk=rollout.pk).state == RolloutState.PAUSED
    detail = staff_client.get(f"/admin/cells/rollout/{rollout.pk}/change/").content.decode()
    assert "wave" in detail.lower() and "ring" in detail.lower()


def test_pinning_from_the_admin_exempts_the_instance(staff_client, fleet):
    from provisioning.rollouts import rollout_create

    pinned = Instance.objects.get(name="adm-0")
    _act(staff_client, "instance", "pin_version", pinned.pk)
    assert Instance.objects.get(pk=pinned.pk).version_pinned
    Release.objects.filter(pk=fleet.pk).update(state=ReleaseState.AVAILABLE)
    rollout = rollout_create(release=Release.objects.get(pk=fleet.pk))
    assert set(rollout.targets.values_list("instance__name", flat=True)) == {"adm-1", "adm-2"}
    assert AuditEvent.objects.filter(action="instance.pin").exists()


def test_the_rollout_tick_is_scheduled_every_minute():
    schedule = Schedule.objects.get(name="rollout tick")
    assert schedule.func == "provisioning.tasks.rollouts_tick" and schedule.minutes == 1
