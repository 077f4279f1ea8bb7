import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from rest_framework.test import APIClient

from cells.choices import InstanceState, OperationKind, OperationState, ShareStatus
from cells.models import Operation, Share
from portal.models import ApiToken
from portal.roles import READ_ONLY_STAFF_GROUP
from tests.factories import make_cell, make_instance, make_user


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()
    yield
    cache.clear()


def token_client(user=None) -> APIClient:
    """An API client authenticated the way API clients are: a bearer token."""
    client = APIClient()
    if user is not None:
        _, plaintext = ApiToken.issue(user=user, name="tests")
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


@pytest.fixture
def world(db):
    """A reef, two customers with a running instance each, read-only staff and staff."""
    cell = make_cell(capacity=5)
    owner, other = make_user(), make_user()
    readonly = make_user(is_staff=True)
    readonly.groups.add(Group.objects.get(name=READ_ONLY_STAFF_GROUP))
    staff = make_user(is_staff=True, is_superuser=True)

    def place(name, user, state=InstanceState.RUNNING):
        instance = make_instance(owner=user, name=name, reef=cell["reef"], database_pool=cell["database"],
                                 compute_pool=cell["compute"], state=state)
        share = cell["storage"].shares.filter(status=ShareStatus.AVAILABLE).first()
        Share.objects.filter(pk=share.pk).update(status=ShareStatus.ASSIGNED, instance=instance)
        return instance

    mine, theirs = place("mine", owner), place("theirs", other)
    provision = Operation.objects.create(kind=OperationKind.PROVISION, instance=mine, state=OperationState.SUCCEEDED)
    return {
        "cell": cell, "mine": mine, "theirs": theirs, "provision": provision,
        "clients": {
            "anonymous": token_client(None), "owner": token_client(owner), "other": token_client(other),
            "readonly": token_client(readonly), "staff": token_client(staff),
        },
        "users": {"owner": owner, "other": other, "readonly": readonly, "staff": staff},
    }
