"""The permission matrix: every endpoint and action for anonymous, the owner, another customer,
read-only staff and staff. Customers never learn that others' instances exist (404, not 403)."""
import pytest

from cells.choices import InstanceState, OperationKind, OperationState
from cells.models import Operation

pytestmark = pytest.mark.django_db
ROLES = ["anonymous", "owner", "other", "readonly", "staff"]


def _expect(row):
    return dict(zip(ROLES, row, strict=True))


READS = {
    #                                   anonymous owner other readonly staff
    "/api/v1/regions/":                 (401, 200, 200, 200, 200),
    "/api/v1/regions/{region}/":        (401, 200, 200, 200, 200),
    "/api/v1/reefs/":                   (401, 403, 403, 200, 200),
    "/api/v1/reefs/{reef}/":            (401, 403, 403, 200, 200),
    "/api/v1/pools/":                   (401, 403, 403, 200, 200),
    "/api/v1/pools/{pool}/":            (401, 403, 403, 200, 200),
    "/api/v1/shares/":                  (401, 403, 403, 200, 200),
    "/api/v1/instances/":               (401, 200, 200, 200, 200),
    "/api/v1/instances/mine/":          (401, 200, 404, 200, 200),
    "/api/v1/operations/":              (401, 200, 200, 200, 200),
    "/api/v1/operations/{operation}/":  (401, 200, 404, 200, 200),
    "/api/v1/tokens/":                  (401, 200, 200, 200, 200),
    "/api/v1/backups/":                 (401, 200, 200, 200, 200),
    "/api/v1/releases/":                (401, 200, 200, 200, 200),
    "/api/v1/rollouts/":                (401, 403, 403, 200, 200),
}


def _url(template, world):
    return template.format(
        region=world["cell"]["reef"].region.slug, reef=world["cell"]["reef"].pk, pool=world["cell"]["database"].pk,
        operation=world["provision"].pk,
    )


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("template", READS)
def test_reads(world, template, role):
    response = world["clients"][role].get(_url(template, world))
    assert response.status_code == _expect(READS[template])[role], response.content
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"code", "message", "fields"}


def test_lists_hold_only_what_the_role_may_see(world):
    names = lambda role: {i["name"] for i in world["clients"][role].get("/api/v1/instances/").json()["results"]}  # noqa: E731
    assert names("owner") == {"mine"} and names("other") == {"theirs"}
    assert names("readonly") == names("staff") == {"mine", "theirs"}
    operations = world["clients"]["other"].get("/api/v1/operations/").json()["results"]
    assert operations == []


def _prepare(world, action):
    from cells.models import Release

    Release.objects.create(version="2026.5.0", image="ghcr.io/cellhub/server", state="available")
    mine = world["mine"]
    if action == "start":
        type(mine).objects.filter(pk=mine.pk).update(state=InstanceState.STOPPED)
    if action == "retry":
        type(mine).objects.filter(pk=mine.pk).update(state=InstanceState.FAILED)
        Operation.objects.filter(pk=world["provision"].pk).update(state=OperationState.FAILED, error="boom")


ACTIONS = {
    #                         anonymous owner other readonly staff
    "stop":                   (401, 202, 404, 403, 202),
    "start":                  (401, 202, 404, 403, 202),
    "retry":                  (401, 202, 404, 403, 202),
    "backup":                 (401, 202, 404, 403, 202),
    "decommission":           (401, 202, 404, 403, 202),
    # No backup exists yet: the time is refused on its field — but only after the role was let in.
    "restore":                (401, 400, 404, 403, 400),
    "restore-files":          (401, 404, 404, 403, 404),
    "upgrade":                (401, 202, 404, 403, 202),
    "pin":                    (401, 403, 403, 403, 200),
}
BODIES = {"decommission": {"confirm": "mine"}, "restore": {"point_in_time": "2026-01-01T00:00:00Z"},
          "restore-files": {"backup": 999999}, "backup": {"kind": "database"}, "upgrade": {"version": "2026.5.0"},
          "pin": {"pinned": True}}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", ACTIONS)
def test_instance_actions(world, action, role):
    _prepare(world, action)
    response = world["clients"][role].post(f"/api/v1/instances/mine/{action}/", BODIES.get(action), format="json")
    expected = _expect(ACTIONS[action])[role]
    assert response.status_code == expected, response.content
    if expected == 200:
        assert response.json()["name"] == "mine"
    if expected == 202:
        body = response.json()
        assert body["instance"] == "mine" and body["state"] == OperationState.QUEUED
        assert response["Location"] == body["url"] and body["url"].endswith(f"/api/v1/operations/{body['id']}/")


@pytest.mark.parametrize("role", ROLES)
def test_operation_retry(world, role):
    Operation.objects.filter(pk=world["provision"].pk).update(state=OperationState.FAILED, error="boom")
    response = world["clients"][role].post(f"/api/v1/operations/{world['provision'].pk}/retry/")
    assert response.status_code == _expect((401, 202, 404, 403, 202))[role], response.content


@pytest.mark.parametrize("role", ROLES)
def test_signup(world, role):
    response = world["clients"][role].post(
        "/api/v1/instances/", {"name": f"new-{role}", "region": world["cell"]["reef"].region.slug}, format="json"
    )
    assert response.status_code == _expect((401, 202, 202, 403, 202))[role], response.content
    if response.status_code == 202:
        assert response.json()["kind"] == OperationKind.PROVISION


TOPOLOGY_WRITES = {
    #                          anonymous owner other readonly staff
    "region": (401, 403, 403, 403, 201),
    "reef": (401, 403, 403, 403, 201),
    "pool": (401, 403, 403, 403, 201),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("resource", TOPOLOGY_WRITES)
def test_topology_writes_are_for_staff(world, resource, role):
    region = world["cell"]["reef"].region
    bodies = {
        "region": ("/api/v1/regions/", {"slug": f"r-{role}", "name": "R", "cloud": "local"}),
        "reef": ("/api/v1/reefs/", {"region": region.slug, "slug": f"reef-{role}", "max_instances": 10}),
        "pool": ("/api/v1/pools/", {"reef": world["cell"]["reef"].pk, "name": f"p-{role}", "kind": "compute",
                                    "provider": "local_compute", "capacity": 5}),
    }
    url, body = bodies[resource]
    response = world["clients"][role].post(url, body, format="json")
    assert response.status_code == _expect(TOPOLOGY_WRITES[resource])[role], response.content


def test_session_auth_works_for_the_browser(client, world):
    client.force_login(world["users"]["owner"])
    assert client.get("/api/v1/instances/mine/").status_code == 200


@pytest.mark.parametrize("role", ROLES)
def test_rollouts_are_for_staff(world, role):
    from cells.models import Release

    Release.objects.create(version="2026.5.0", image="img", state="available")
    response = world["clients"][role].post("/api/v1/rollouts/", {"release": "2026.5.0", "batch_size": 5},
                                           format="json")
    assert response.status_code == _expect((401, 403, 403, 403, 201))[role], response.content
    if response.status_code == 201:
        body = response.json()
        assert body["state"] == "planned" and [w["total"] for w in body["waves"]] == [2]
        started = world["clients"][role].post(f"/api/v1/rollouts/{body['id']}/start/")
        assert started.status_code == 200 and started.json()["state"] == "running"
        again = world["clients"][role].post(f"/api/v1/rollouts/{body['id']}/start/")
        assert again.status_code == 409 and again.json()["error"]["current_state"] == "running"


@pytest.mark.parametrize("role", ROLES)
def test_releases_are_added_by_staff(world, role):
    response = world["clients"][role].post("/api/v1/releases/", {"version": "9.9.9", "image": "img"}, format="json")
    assert response.status_code == _expect((401, 403, 403, 403, 201))[role], response.content
    if response.status_code == 201:
        client = world["clients"][role]
        assert client.post("/api/v1/releases/9.9.9/make-default/").status_code == 409  # a draft first
        assert client.post("/api/v1/releases/9.9.9/make-available/").json()["state"] == "available"
        assert client.post("/api/v1/releases/9.9.9/make-default/").json()["state"] == "default"


CAPACITY_ACTIONS = {
    #                     anonymous owner other readonly staff
    ("reefs", "top-up"):      (401, 403, 403, 403, 202),
    ("reefs", "drain"):       (401, 403, 403, 403, 200),
    ("pools", "drain"):       (401, 403, 403, 403, 200),
    ("pools", "mark-failed"): (401, 403, 403, 403, 200),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("resource,action", CAPACITY_ACTIONS)
def test_capacity_actions_are_for_staff(world, resource, action, role):
    target = world["cell"]["reef"].pk if resource == "reefs" else world["cell"]["storage"].pk
    body = {"reason": "gateway gone"} if action == "mark-failed" else None
    response = world["clients"][role].post(f"/api/v1/{resource}/{target}/{action}/", body, format="json")
    assert response.status_code == _expect(CAPACITY_ACTIONS[(resource, action)])[role], response.content
    if response.status_code == 200:
        assert response.json()["status"] == ("failed" if action == "mark-failed" else "draining")


def test_replace_needs_a_failed_pool_and_then_answers_202(world):
    client, pool = world["clients"]["staff"], world["cell"]["storage"]
    refused = client.post(f"/api/v1/pools/{pool.pk}/replace/")
    assert refused.status_code == 409 and "available" in refused.json()["error"]["message"]
    client.post(f"/api/v1/pools/{pool.pk}/mark-failed/", {"reason": "gateway gone"}, format="json")
    accepted = client.post(f"/api/v1/pools/{pool.pk}/replace/")
    assert accepted.status_code == 202 and accepted.json()["kind"] == "replace"


def test_another_customers_backups_are_hidden_from_list_and_detail(world):
    """Each customer has a backup: the list shows one's own only, and the other's detail is a 404."""
    from django.utils import timezone

    from provisioning.models import Backup, BackupKind, BackupState

    def backup(instance):
        return Backup.objects.create(instance=instance, kind=BackupKind.DATABASE, state=BackupState.SUCCEEDED,
                                     pool=world["cell"]["database"], location=f"file:///backups/{instance.name}",
                                     finished_at=timezone.now(), taken_at=timezone.now())

    mine, theirs = backup(world["mine"]), backup(world["theirs"])
    listed = lambda role: {row["id"] for row in world["clients"][role].get("/api/v1/backups/").json()["results"]}  # noqa: E731
    assert listed("owner") == {mine.pk} and listed("other") == {theirs.pk}
    assert listed("readonly") == listed("staff") == {mine.pk, theirs.pk}
    assert world["clients"]["owner"].get(f"/api/v1/backups/{theirs.pk}/").status_code == 404
    assert world["clients"]["other"].get(f"/api/v1/backups/{mine.pk}/").status_code == 404
    assert world["clients"]["owner"].get(f"/api/v1/backups/{mine.pk}/").status_code == 200
