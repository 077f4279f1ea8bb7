"""Signup on the customer site: bad input gets a message on its field and nothing is created."""
import pytest
from django.contrib.auth import get_user_model

from cells.choices import InstanceState, OperationState, RegionStatus, ShareStatus
from cells.models import CapacityShortfall, Instance, Operation, Share
from tests.factories import make_cell, make_instance, make_reef, make_region, make_user

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture
def cell():
    return make_cell(capacity=3)


def _form(region, **overrides):
    return {"email": "ada@example.com", "password": "a-long-enough-passphrase", "name": "acme",
            "region": region.pk, **overrides}


def _counts():
    return (User.objects.count(), Instance.objects.count(), Operation.objects.count(),
            Share.objects.filter(status=ShareStatus.ASSIGNED).count())


def test_signup_page_lists_regions(client, cell):
    page = client.get("/signup/").content.decode()
    assert cell["reef"].region.name in page and 'name="email"' in page


def test_signup_creates_account_instance_and_queued_provision(client, cell):
    response = client.post("/signup/", _form(cell["reef"].region))
    assert response.status_code == 302 and response["Location"] == "/instances/acme/"
    instance = Instance.objects.get(name="acme")
    assert instance.owner.email == "ada@example.com" and instance.owner.check_password("a-long-enough-passphrase")
    assert instance.state == InstanceState.PENDING and instance.reef == cell["reef"]
    assert instance.share.status == ShareStatus.ASSIGNED
    operation = instance.operations.get()
    assert operation.state == OperationState.QUEUED and operation.done_step_names == ["place"]
    assert client.get("/instances/").status_code == 200  # logged in


@pytest.mark.parametrize(
    "overrides,field,message",
    [
        ({"name": "www"}, "name", "reserved"),
        ({"name": "Not_A_Label"}, "name", "lowercase letters, digits and hyphens"),
        ({"name": "ab"}, "name", "3 to 40 characters"),
        ({"name": "-acme"}, "name", "starting and ending"),
        ({"email": "not-an-email"}, "email", "valid email"),
        ({"password": "123"}, "password", "too short"),
    ],
)
def test_bad_input_is_refused_on_its_field(client, cell, overrides, field, message):
    before = _counts()
    response = client.post("/signup/", _form(cell["reef"].region, **overrides))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert field in errors and message in " ".join(errors[field])
    assert _counts() == before


def test_taken_name_is_refused(client, cell):
    make_instance(name="acme", region=cell["reef"].region)
    before = _counts()
    response = client.post("/signup/", _form(cell["reef"].region))
    assert "is taken" in " ".join(response.context["form"].errors["name"])
    assert _counts() == before


def test_existing_email_is_refused(client, cell):
    make_user(username="ada@example.com", email="ada@example.com")
    response = client.post("/signup/", _form(cell["reef"].region, email="ADA@example.com"))
    assert "account with this e-mail exists" in " ".join(response.context["form"].errors["email"])


def test_region_not_taking_signups_is_refused(client):
    closed = make_region(status=RegionStatus.DRAINING, name="Closed Bay")
    make_cell(make_reef(closed))
    before = _counts()
    response = client.post("/signup/", _form(closed))
    assert "Closed Bay is not taking new instances" in " ".join(response.context["form"].errors["region"])
    assert _counts() == before


def test_no_capacity_gives_the_capacity_message_and_staff_see_the_shortfall(client):
    cell = make_cell(capacity=1)
    region = cell["reef"].region
    make_instance(name="first", region=region)  # not placed: does not matter
    client.post("/signup/", _form(region, name="taker", email="t@example.com"))
    assert Instance.objects.get(name="taker").share is not None
    client.logout()
    before = _counts()
    response = client.post("/signup/", _form(region, name="late", email="late@example.com"))
    assert response.status_code == 400
    assert "We are adding capacity" in " ".join(response.context["form"].non_field_errors())
    assert _counts() == before
    shortfall = CapacityShortfall.objects.get()
    assert (shortfall.region, shortfall.instance_name) == (region, "late")


def test_signed_in_customer_adds_an_instance_without_account_fields(client, cell):
    owner = make_user()
    client.force_login(owner)
    assert 'name="email"' not in client.get("/signup/").content.decode()
    response = client.post("/signup/", {"name": "second", "region": cell["reef"].region.pk})
    assert response.status_code == 302
    assert Instance.objects.get(name="second").owner == owner


def test_customers_see_only_their_own_instances(client, cell):
    mine, theirs = make_user(), make_user()
    make_instance(owner=mine, name="mine-one", region=cell["reef"].region)
    make_instance(owner=theirs, name="theirs-one", region=cell["reef"].region)
    client.force_login(mine)
    page = client.get("/instances/").content.decode()
    assert "mine-one" in page and "theirs-one" not in page
    assert client.get("/instances/theirs-one/").status_code == 404
    assert client.get("/instances/theirs-one/status.json").status_code == 404
    status = client.get("/instances/mine-one/status.json").json()
    assert status["state"] == "pending" and status["name"] == "mine-one"


def test_instance_list_queries_do_not_grow_with_instances(client, cell, django_assert_max_num_queries):
    owner = make_user()
    client.force_login(owner)
    for n in range(3):
        make_instance(owner=owner, name=f"few-{n}", region=cell["reef"].region)
    client.get("/instances/")
    with django_assert_max_num_queries(6) as few:
        client.get("/instances/")
    for n in range(20):
        make_instance(owner=owner, name=f"many-{n}", region=cell["reef"].region)
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get("/instances/")


def test_login_required(client):
    response = client.get("/instances/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
