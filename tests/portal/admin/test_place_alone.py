"""Staff place a new instance alone on a reef from the reef admin (the dedicated end of the isolation spectrum):
an intermediate page asks for the name and the owner; a refusal is shown on the form and creates nothing."""
from __future__ import annotations

import pytest

from cells.audit import AuditEvent
from cells.choices import OperationKind, OperationState
from cells.models import CapacityShortfall, Instance, Pool, Reef
from tests.factories import make_cell, make_instance, make_region, make_user

pytestmark = pytest.mark.django_db
URL = "/admin/cells/reef/"


@pytest.fixture
def reefs(db):
    region = make_region(slug="eu")
    shared = make_cell(capacity=5, region=region, status="active", slug="shared")["reef"]
    alone = make_cell(capacity=5, region=region, status="active", slug="alone")["reef"]
    return shared, alone


def _act(client, reef, **fields):
    data = {"action": "place_alone", "_selected_action": [reef.pk], **fields}
    return client.post(URL, data)


def test_the_action_asks_for_the_name_and_owner_first(staff_client, reefs):
    _, alone = reefs
    page = _act(staff_client, alone)
    assert page.status_code == 200
    body = page.content.decode()
    assert "Place a new instance alone on" in body and 'name="name"' in body and 'name="owner"' in body
    assert not Instance.objects.exists()


def test_staff_place_an_instance_alone_on_a_reef(staff_client, staff_user, reefs):
    shared, alone = reefs
    customer = make_user(username="ada", email="ada@example.com")
    response = _act(staff_client, alone, apply="1", name="solo", owner="ADA@example.com")
    assert response.status_code == 302, response.content.decode()[:2000]

    solo = Instance.objects.get(name="solo")
    assert solo.owner_id == customer.pk and solo.reef_id == alone.pk
    assert Reef.objects.get(pk=alone.pk).dedicated_to_id == solo.pk
    provision = solo.operations.get()
    assert provision.kind == OperationKind.PROVISION and provision.state == OperationState.QUEUED
    assert provision.requested_by_id == staff_user.pk
    event = AuditEvent.objects.get(action="reef.place_alone")
    assert event.outcome == "succeeded" and event.target_id == str(alone.pk)
    assert event.details["instance"] == "solo" and event.details["operation"] == provision.pk


@pytest.mark.parametrize("case", ["not empty", "unknown owner", "name taken"])
def test_a_refused_placement_is_shown_on_the_form_and_creates_nothing(staff_client, reefs, case):
    shared, alone = reefs
    make_user(username="ada", email="ada@example.com")
    if case == "not empty":
        make_instance(name="already", region=alone.region, reef=alone)
    if case == "name taken":
        make_instance(name="solo", region=shared.region, reef=shared)
    before = set(Instance.objects.values_list("name", flat=True))

    page = _act(staff_client, alone, apply="1", name="solo", owner="nobody" if case == "unknown owner" else "ada")

    assert page.status_code == 200
    body = page.content.decode()
    expected = {"not empty": "holds other instances", "unknown owner": "No active account",
                "name taken": "is taken"}[case]
    assert expected in body
    assert set(Instance.objects.values_list("name", flat=True)) == before
    assert Reef.objects.get(pk=alone.pk).dedicated_to_id is None
    if case != "unknown owner":  # a refusal by the hub is audited; a form error never reached it
        assert AuditEvent.objects.get(action="reef.place_alone").outcome == "refused"


def test_no_free_slot_is_refused_and_recorded_as_a_shortfall(staff_client, reefs):
    _, alone = reefs
    Pool.objects.filter(reef=alone, kind="compute").update(status="draining")
    make_user(username="ada", email="ada@example.com")
    page = _act(staff_client, alone, apply="1", name="solo", owner="ada")
    assert page.status_code == 200 and "no free slot" in page.content.decode()
    assert not Instance.objects.filter(name="solo").exists()
    assert CapacityShortfall.objects.filter(instance_name="solo").exists()
    assert AuditEvent.objects.get(action="reef.place_alone").outcome == "refused"


def test_one_reef_at_a_time(staff_client, reefs):
    response = _act(staff_client, reefs[0], _selected_action=[r.pk for r in reefs])
    assert response.status_code == 302
    assert not Instance.objects.exists()
