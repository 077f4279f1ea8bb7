"""Customers see only the releases they can get: never a draft or a withdrawn release, nor its notes."""
import pytest

from cells.choices import ReleaseState
from cells.models import Release

pytestmark = pytest.mark.django_db


@pytest.fixture
def releases(db):
    return {
        state: Release.objects.create(version=f"3.{n}", image="img", state=state, notes=f"secret notes of {state}")
        for n, state in enumerate(ReleaseState.values)
    }


def test_customers_see_available_and_default_releases_only(world, releases):
    for role in ("owner", "other"):
        client = world["clients"][role]
        listed = {row["version"]: row for row in client.get("/api/v1/releases/").json()["results"]}
        assert set(listed) == {releases[ReleaseState.AVAILABLE].version, releases[ReleaseState.DEFAULT].version}
        for state in (ReleaseState.DRAFT, ReleaseState.WITHDRAWN):
            assert client.get(f"/api/v1/releases/{releases[state].version}/").status_code == 404
            assert client.get("/api/v1/releases/", {"state": state}).json()["results"] == []
        body = client.get("/api/v1/releases/").content.decode()
        assert "secret notes of draft" not in body and "secret notes of withdrawn" not in body


@pytest.mark.parametrize("role", ["readonly", "staff"])
def test_staff_see_every_release(world, releases, role):
    listed = {row["version"] for row in world["clients"][role].get("/api/v1/releases/").json()["results"]}
    assert listed == {release.version for release in releases.values()}
