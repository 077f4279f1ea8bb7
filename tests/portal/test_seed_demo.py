"""seed_demo builds the demo topology once and prints a staff login once."""
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from cells import selectors
from cells.models import Pool, Reef, Region, Share

pytestmark = pytest.mark.django_db


def _seed():
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def _counts():
    return [m.objects.count() for m in (Region, Reef, Pool, Share, get_user_model())]


def test_seed_demo_is_idempotent_and_prints_the_password_once():
    first = _seed()
    counts = _counts()
    assert counts == [1, 2, 6, 20, 1]
    assert "password:" in first
    password = first.split("password:")[1].split()[0]
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser and admin.check_password(password)

    second = _seed()
    assert _counts() == counts
    assert "password:" not in second


def test_seeded_reefs_can_place_instances():
    _seed()
    reefs = selectors.reefs_with_capacity().filter(region__slug="local")
    assert [r.placeable_slots for r in reefs] == [10, 10]  # 10 shares per storage pool bound each reef
