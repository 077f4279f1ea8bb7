"""A dedicated reef: staff place an instance alone on an empty reef through the API (as a signup does); the reef
then takes no other instance and gets no top-up."""
from __future__ import annotations

import pytest

from cells.choices import InstanceState, OperationState
from cells.errors import NoCapacity, Refused
from cells.models import Instance, Reef
from provisioning.capacity import reef_capacity
from provisioning.lifecycle import instance_signup
from tests.factories import make_cell, make_region, make_user
from tests.portal.api.conftest import token_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_reefs(db, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    region = make_region(slug="eu")
    shared = make_cell(capacity=1, reef=None, region=region, status="active", slug="shared", max_instances=5)
    alone = make_cell(capacity=10, region=region, status="active", slug="alone")  # the roomier one
    return {"region": region, "shared": shared["reef"], "alone": alone["reef"]}


def _signup(client, name, **extra):
    return client.post("/api/v1/instances/", {"name": name, "region": "eu", **extra}, format="json")


def test_staff_place_an_instance_alone_and_the_reef_takes_no_other(
    two_reefs, sync_tasks, django_capture_on_commit_callbacks
):
    staff = token_client(make_user(is_staff=True, is_superuser=True))
    with django_capture_on_commit_callbacks(execute=True):
        response = _signup(staff, "solo", dedicated_reef="alone")

    assert response.status_code == 202, response.content
    solo = Instance.objects.get(name="solo")
    assert solo.reef_id == two_reefs["alone"].pk and solo.state == InstanceState.RUNNING
    assert Reef.objects.get(pk=two_reefs["alone"].pk).dedicated_to_id == solo.pk
    assert solo.operations.get().state == OperationState.SUCCEEDED
    # the next signups never land there, though it is the roomiest reef of the region
    first = instance_signup(name="other-1", region=two_reefs["region"], new_owner={
        "email": "o1@example.com", "password": "a-long-enough-passphrase"})
    assert first.instance.reef_id == two_reefs["shared"].pk
    with pytest.raises(NoCapacity):
        instance_signup(name="other-2", region=two_reefs["region"], new_owner={
            "email": "o2@example.com", "password": "a-long-enough-passphrase"})
    # and it gets no new pools
    plan = reef_capacity(reef=two_reefs["alone"])
    assert not plan.orders
    assert all("dedicated to instance solo" in shortfall.reason for shortfall in plan.shortfalls)


def test_a_customer_cannot_ask_for_a_reef_of_their_own(two_reefs):
    response = _signup(token_client(make_user()), "solo", dedicated_reef="alone")
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert fields == {"dedicated_reef": ["only staff place an instance on a reef of its own"]}
    assert not Instance.objects.filter(name="solo").exists()


def test_a_reef_holding_an_instance_is_refused_and_nothing_is_left(two_reefs):
    staff = token_client(make_user(is_staff=True, is_superuser=True))
    instance_signup(name="first", region=two_reefs["region"], new_owner={
        "email": "f@example.com", "password": "a-long-enough-passphrase"})
    assert Instance.objects.get(name="first").reef_id == two_reefs["alone"].pk  # the roomiest

    response = _signup(staff, "solo", dedicated_reef="alone")

    assert response.status_code in (400, 409), response.content
    assert response.json()["error"]["fields"].get("dedicated_reef")
    assert "holds other instances" in response.json()["error"]["message"]
    assert not Instance.objects.filter(name="solo").exists()
    assert Reef.objects.get(pk=two_reefs["alone"].pk).dedicated_to_id is None


def test_the_service_names_the_field_for_a_reef_of_another_region(two_reefs):
    other = make_cell(capacity=2)["reef"]
    with pytest.raises(Refused) as refusal:
        instance_signup(name="solo", region=two_reefs["region"], dedicated_reef=other, new_owner={
            "email": "s@example.com", "password": "a-long-enough-passphrase"})
    assert refusal.value.field == "dedicated_reef"
