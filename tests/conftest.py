import os

import pytest
from django.db import connection

from tests.factories import make_user


@pytest.fixture(autouse=True, scope="session")
def _tests_run_on_postgresql(django_db_setup, django_db_blocker):
    """Locking and constraints are the production database's: refuse to pass on anything else."""
    if os.environ.get("CELLHUB_ALLOW_SQLITE_TESTS"):
        return
    with django_db_blocker.unblock():
        assert connection.vendor == "postgresql", "run the tests with DATABASE_URL on PostgreSQL (scripts/test)"


@pytest.fixture
def user(db):
    return make_user()


@pytest.fixture
def staff_user(db):
    return make_user(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client
