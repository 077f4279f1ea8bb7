"""Customers choose their maintenance window and see the next one and the upgrade waiting for it."""
import pytest

from cells.choices import InstanceState, ReleaseState
from cells.models import Instance, Release
from provisioning.rollouts import rollout_create, rollout_start
from tests.factories import make_cell, make_instance, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def mine(client):
    owner = make_user()
    cell = make_cell()
    instance = make_instance(owner=owner, name="windowed", reef=cell["reef"], database_pool=cell["database"],
                             compute_pool=cell["compute"], state=InstanceState.RUNNING, server_version="1.0")
    client.force_login(owner)
    return instance


def test_owner_sets_a_window_and_sees_it(client, mine):
    page = client.get("/instances/windowed/").content.decode()
    assert "Maintenance window" in page and "your region's default" in page and "Sunday 02:00" in page
    response = client.post("/instances/windowed/window/", {"weekday": 2, "hour": 14}, follow=True)
    assert "Maintenance window saved." in response.content.decode()
    mine.refresh_from_db()
    assert (mine.maintenance_weekday, mine.maintenance_hour) == (2, 14)
    assert "Wednesday 14:00–16:00 UTC" in client.get("/instances/windowed/").content.decode()
    client.post("/instances/windowed/window/", {"use_region_default": "on"})
    mine.refresh_from_db()
    assert (mine.maintenance_weekday, mine.maintenance_hour) == (None, None)


def test_an_incomplete_window_is_refused_and_nothing_changes(client, mine):
    response = client.post("/instances/windowed/window/", {"weekday": 2}, follow=True)
    assert "Choose a day and an hour" in response.content.decode()
    mine.refresh_from_db()
    assert mine.maintenance_weekday is None


def test_someone_elses_window_is_404(client, mine):
    client.force_login(make_user())
    assert client.post("/instances/windowed/window/", {"weekday": 1, "hour": 1}).status_code == 404
    mine.refresh_from_db()
    assert mine.maintenance_weekday is None


def test_the_upgrade_waiting_for_the_window_is_shown(client, mine):
    assert "No upgrade is waiting." in client.get("/instances/windowed/").content.decode()
    release = Release.objects.create(version="2.0", image="img", state=ReleaseState.AVAILABLE)
    rollout_start(rollout=rollout_create(release=release))
    assert "An upgrade to <strong>2.0</strong> is waiting" in client.get("/instances/windowed/").content.decode()
    assert Instance.objects.get(pk=mine.pk).server_version == "1.0"
