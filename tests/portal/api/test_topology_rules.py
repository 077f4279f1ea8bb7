"""Topology rules staff cannot break through the API; each refusal is a 400 naming the field."""
import pytest
from django.db import IntegrityError, transaction

from cells.choices import InstanceState, PoolKind, PoolStatus, ShareStatus
from cells.models import Pool, Region, Release
from tests.factories import make_instance, make_pool

pytestmark = pytest.mark.django_db


def _refused(response, field):
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"], response.json()
    return response.json()["error"]["fields"][field]


def _patch(world, path, body):
    return world["clients"]["staff"].patch(path, body, format="json")


@pytest.mark.parametrize("name", ["CELLHUB_BACKUP_KEY", "SECRET_KEY", "PATH", "CELLHUB_POOL_SECRET_", 7])
def test_a_pool_config_may_only_name_allowed_secret_variables(world, name):
    pool = world["cell"]["database"]
    _refused(_patch(world, f"/api/v1/pools/{pool.pk}/", {"config": {"admin_password_env": name}}), "config")
    pool.refresh_from_db()
    assert pool.config == {}
    created = world["clients"]["staff"].post("/api/v1/pools/", {
        "reef": world["cell"]["reef"].pk, "name": "new-db", "kind": "database", "provider": "postgres",
        "capacity": 3, "config": {"host": "127.0.0.1", "admin_password_env": name},
    }, format="json")
    _refused(created, "config")
    assert not Pool.objects.filter(name="new-db").exists()


def test_an_allowed_secret_variable_is_accepted(world):
    pool = world["cell"]["database"]
    response = _patch(world, f"/api/v1/pools/{pool.pk}/", {"config": {"admin_password_env": "CELLHUB_POOL_SECRET_DB1"}})
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("config", ["a string", ["a", "list"], 3, None])
def test_a_pool_config_must_be_an_object(world, config):
    pool = world["cell"]["compute"]
    _refused(_patch(world, f"/api/v1/pools/{pool.pk}/", {"config": config}), "config")


@pytest.mark.parametrize("kind", ["database", "compute", "storage"])
def test_capacity_cannot_shrink_under_used_slots(world, kind):
    pool = world["cell"][kind]  # two instances (and two shares) are placed on each of the world's pools
    _refused(_patch(world, f"/api/v1/pools/{pool.pk}/", {"capacity": 1}), "capacity")
    pool.refresh_from_db()
    assert pool.capacity == 5
    assert _patch(world, f"/api/v1/pools/{pool.pk}/", {"capacity": 2}).status_code == 200
    if kind == PoolKind.STORAGE:
        assert Pool.objects.get(pk=pool.pk).shares.count() == 2
        assert _patch(world, f"/api/v1/pools/{pool.pk}/", {"capacity": 4}).status_code == 200
        assert Pool.objects.get(pk=pool.pk).shares.filter(status=ShareStatus.AVAILABLE).count() == 2


@pytest.mark.parametrize("kind", ["database", "compute"])
def test_the_database_refuses_a_capacity_below_the_instances_of_any_kind(world, kind):
    """The trigger is the last line: even a raw update cannot shrink a pool under its instances."""
    with pytest.raises(IntegrityError, match="pool_held_within_capacity"), transaction.atomic():
        Pool.objects.filter(pk=world["cell"][kind].pk).update(capacity=1)
    decommissioned = make_instance(reef=world["cell"]["reef"], state=InstanceState.DECOMMISSIONED,
                                   database_pool=world["cell"]["database"], compute_pool=world["cell"]["compute"])
    assert decommissioned.pk
    Pool.objects.filter(pk=world["cell"][kind].pk).update(capacity=2)  # the decommissioned one holds nothing


def test_max_instances_cannot_drop_below_the_reefs_instances(world):
    reef = world["cell"]["reef"]
    _refused(_patch(world, f"/api/v1/reefs/{reef.pk}/", {"max_instances": 1}), "max_instances")
    assert _patch(world, f"/api/v1/reefs/{reef.pk}/", {"max_instances": 2}).status_code == 200


def test_provider_and_host_cannot_change_under_instances(world):
    pool = world["cell"]["database"]
    _refused(_patch(world, f"/api/v1/pools/{pool.pk}/", {"provider": "postgres"}), "provider")
    _refused(_patch(world, f"/api/v1/pools/{pool.pk}/", {"config": {"host": "attacker.example"}}), "config")
    _refused(_patch(world, f"/api/v1/pools/{pool.pk}/", {"kind": "compute", "provider": "local_compute"}), "kind")
    pool.refresh_from_db()
    assert (pool.provider, pool.config, pool.kind) == ("sqlite", {}, "database")
    empty = make_pool(world["cell"]["reef"], PoolKind.DATABASE, config={"host": "a.example"})
    assert _patch(world, f"/api/v1/pools/{empty.pk}/", {"provider": "postgres",
                                                        "config": {"host": "b.example"}}).status_code == 200


@pytest.mark.parametrize("version", ["1.0/../..", "../etc", "<script>", "1..0", "v1", ""])
def test_release_versions_follow_a_strict_pattern(world, version):
    response = world["clients"]["staff"].post("/api/v1/releases/", {"version": version, "image": "img"}, format="json")
    _refused(response, "version")
    assert not Release.objects.filter(version=version).exists()


@pytest.mark.parametrize("image", ["<script>alert(1)</script>", "img:tag", "Img", "img/../x", "img;rm"])
def test_release_images_are_image_references(world, image):
    response = world["clients"]["staff"].post("/api/v1/releases/", {"version": "3.0", "image": image}, format="json")
    _refused(response, "image")


@pytest.mark.parametrize("field", ["location", "name"])
def test_markup_is_refused_in_region_text(world, field):
    body = {"slug": "xss", "name": "X", "location": "westus2", field: "<script>alert(1)</script>"}
    _refused(world["clients"]["staff"].post("/api/v1/regions/", body, format="json"), field)
    assert not Region.objects.filter(slug="xss").exists()


def test_a_pool_registered_by_post_is_available_and_not_coming_capacity(world):
    response = world["clients"]["staff"].post("/api/v1/pools/", {
        "reef": world["cell"]["reef"].pk, "name": "added-by-hand", "kind": "storage", "provider": "local_fs",
        "capacity": 3, "config": {},
    }, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["status"] == PoolStatus.AVAILABLE and response.json()["free_slots"] == 3
    assert Pool.objects.get(name="added-by-hand").shares.count() == 3
