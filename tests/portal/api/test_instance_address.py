"""The API and the admin show where a local instance answers: its own address with its port."""
import pytest

from provisioning.ports import instance_port
from tests.provisioning import test_backups as shared
from tests.provisioning.test_backups import signup

pytestmark = pytest.mark.django_db
run = shared.run
sqlite_cell = shared.sqlite_cell


def test_the_api_and_the_admin_show_the_instance_address(run, sqlite_cell, client, admin_client):
    instance = signup(run, sqlite_cell)
    address = f"http://acme.cells.localhost:{instance_port(instance)}/"
    client.force_login(instance.owner)
    assert client.get("/api/v1/instances/acme/").json()["address"] == address
    assert client.get("/api/v1/instances/").json()["results"][0]["address"] == address
    page = admin_client.get(f"/admin/cells/instance/{instance.pk}/change/").content.decode()
    assert f'href="{address}"' in page
