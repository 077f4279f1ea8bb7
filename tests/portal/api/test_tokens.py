"""API tokens: hashed at rest, shown once, revocable, expiring; failed attempts throttled; signups throttled."""
from datetime import timedelta

import pytest
from django.utils import timezone

from portal.models import ApiToken, hash_token_secret
from tests.portal.api.conftest import token_client

pytestmark = pytest.mark.django_db


def test_token_is_shown_once_and_stored_only_as_a_hash(world):
    client = world["clients"]["owner"]
    created = client.post("/api/v1/tokens/", {"name": "ci"}, format="json")
    assert created.status_code == 201
    plaintext = created.json()["token"]
    row = ApiToken.objects.get(pk=created.json()["id"])
    scheme, prefix, secret = plaintext.split("_", 2)
    assert (scheme, prefix) == ("ch", row.prefix)
    assert row.secret_hash == hash_token_secret(secret) and secret not in row.secret_hash
    listed = client.get(f"/api/v1/tokens/{row.pk}/").json()
    assert listed["token"] is None and listed["prefix"] == row.prefix

    fresh = token_client()
    fresh.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert fresh.get("/api/v1/instances/").status_code == 200
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_revoked_and_expired_tokens_are_refused(world):
    owner = world["users"]["owner"]
    revocable, plaintext = ApiToken.issue(user=owner, name="temp")
    user_client = token_client()
    user_client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert user_client.get("/api/v1/instances/").status_code == 200
    assert world["clients"]["owner"].delete(f"/api/v1/tokens/{revocable.pk}/").status_code == 204
    assert user_client.get("/api/v1/instances/").status_code == 401

    _, expiring = ApiToken.issue(user=owner, name="old", expires_at=timezone.now() - timedelta(seconds=1))
    old_client = token_client()
    old_client.credentials(HTTP_AUTHORIZATION=f"Bearer {expiring}")
    assert old_client.get("/api/v1/instances/").status_code == 401


def test_someone_elses_token_cannot_be_seen_or_revoked(world):
    token, _ = ApiToken.issue(user=world["users"]["owner"], name="mine")
    assert world["clients"]["other"].delete(f"/api/v1/tokens/{token.pk}/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_failed_token_attempts_are_throttled_per_address(world, settings):
    settings.CELLHUB = {**settings.CELLHUB, "TOKEN_FAILURES_PER_WINDOW": 3}
    guesser = token_client()
    guesser.credentials(HTTP_AUTHORIZATION="Bearer ch_guess_wrong")
    assert [guesser.get("/api/v1/instances/").status_code for _ in range(4)] == [401, 401, 401, 429]
    # Even a good token from that address waits out the window.
    _, good = ApiToken.issue(user=world["users"]["owner"], name="good")
    guesser.credentials(HTTP_AUTHORIZATION=f"Bearer {good}")
    response = guesser.get("/api/v1/instances/")
    assert response.status_code == 429 and response.json()["error"]["code"] == "throttled"


def test_signups_are_throttled(world, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"signup": "2/hour"}}
    from rest_framework.throttling import ScopedRateThrottle

    # DRF reads the rates once, into the class: put the very dict it had back afterwards (every scope in it).
    rates = ScopedRateThrottle.THROTTLE_RATES
    ScopedRateThrottle.THROTTLE_RATES = {"signup": "2/hour"}
    try:
        client, region = world["clients"]["owner"], world["cell"]["reef"].region.slug
        codes = [client.post("/api/v1/instances/", {"name": f"burst-{n}", "region": region}, format="json").status_code
                 for n in range(3)]
        assert codes == [202, 202, 429]
    finally:
        ScopedRateThrottle.THROTTLE_RATES = rates
