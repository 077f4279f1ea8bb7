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
    response = guesser.get("/api/v1/instances/")
    assert response.status_code == 429 and response.json()["error"]["code"] == "throttled"
    # A good token from that address is not locked out by the guesses (see the next test).
    _, good = ApiToken.issue(user=world["users"]["owner"], name="good")
    guesser.credentials(HTTP_AUTHORIZATION=f"Bearer {good}")
    assert guesser.get("/api/v1/instances/").status_code == 200


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


def test_bad_tokens_from_one_address_do_not_lock_out_other_tokens_from_it(world, settings):
    """Clients behind one proxy share an address: one client's bad tokens must not lock out the rest."""
    settings.CELLHUB = {**settings.CELLHUB, "TOKEN_FAILURES_PER_WINDOW": 3}
    owner_token, _ = ApiToken.issue(user=world["users"]["owner"], name="target")
    guesser = token_client()
    guesser.credentials(HTTP_AUTHORIZATION=f"Bearer ch_{owner_token.prefix}_wrongsecret")
    assert [guesser.get("/api/v1/instances/").status_code for _ in range(4)] == [401, 401, 401, 429]
    # The same address with another (good) token still gets in.
    _, good = ApiToken.issue(user=world["users"]["other"], name="good")
    guesser.credentials(HTTP_AUTHORIZATION=f"Bearer {good}")
    assert guesser.get("/api/v1/instances/").status_code == 200
    # Another address guessing the same token is counted apart.
    elsewhere = token_client()
    elsewhere.credentials(HTTP_AUTHORIZATION=f"Bearer ch_{owner_token.prefix}_wrongsecret")
    assert elsewhere.get("/api/v1/instances/", REMOTE_ADDR="10.0.0.9").status_code == 401


def test_guessed_prefixes_count_together_per_address(world, settings):
    settings.CELLHUB = {**settings.CELLHUB, "TOKEN_FAILURES_PER_WINDOW": 3}
    guesser = token_client()
    codes = []
    for n in range(4):
        guesser.credentials(HTTP_AUTHORIZATION=f"Bearer ch_guess{n}_wrong")
        codes.append(guesser.get("/api/v1/instances/").status_code)
    assert codes == [401, 401, 401, 429]


def test_a_real_prefix_with_a_wrong_secret_is_refused(world):
    token, plaintext = ApiToken.issue(user=world["users"]["owner"], name="real")
    client = token_client()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer ch_{token.prefix}_{'x' * 40}")
    response = client.get("/api/v1/instances/")
    assert response.status_code == 401 and response.json()["error"]["code"] == "authentication_failed"
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext[:-1]}{'A' if plaintext[-1] != 'A' else 'B'}")
    assert client.get("/api/v1/instances/").status_code == 401


def test_a_deactivated_users_token_is_refused(world):
    owner = world["users"]["owner"]
    _, plaintext = ApiToken.issue(user=owner, name="before")
    client = token_client()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert client.get("/api/v1/instances/").status_code == 200
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    assert client.get("/api/v1/instances/").status_code == 401


def test_the_signup_limit_holds_under_concurrent_requests(world, settings):
    """60 requests at once against a limit of 20: exactly 20 pass (real threads, one shared counter)."""
    import sys
    import threading

    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from portal.api.views.instances import InstanceViewSet

    view = InstanceViewSet()
    view.action = "create"
    barrier, results = threading.Barrier(60), []
    user = world["users"]["owner"]

    def attempt():
        request = Request(APIRequestFactory().post("/api/v1/instances/"))
        request.user = user
        (throttle,) = view.get_throttles()  # the view's own throttle, as it builds it for a signup
        throttle.THROTTLE_RATES = {"signup": "20/hour"}
        barrier.wait()
        results.append(throttle.allow_request(request, view))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: a read-decide-write race shows at once
    try:
        threads = [threading.Thread(target=attempt) for _ in range(60)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert results.count(True) == 20 and len(results) == 60
