"""Account basics on the site and the API: e-mail log-in in any case, the password similarity check, password reset
(through the mail outbox) and change, lockout keyed by account AND address (site, admin, token endpoint) and its
reset, throttled signup, the tokens page and the password grant."""
import re
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.core import mail
from django.core.management import call_command
from django.utils import timezone

from cells.models import AuditEvent
from portal.models import ApiToken
from tests.factories import make_cell, make_user

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery staple"
A, B = "203.0.113.7", "198.51.100.9"


def _login(client, username, password=PASSWORD, address=A, path="/login/"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def _obtain(client, email, password=PASSWORD, address=A, **extra):
    return client.post("/api/v1/tokens/obtain/", {"email": email, "password": password, **extra},
                       content_type="application/json", REMOTE_ADDR=address)


def test_an_email_typed_with_capitals_at_signup_logs_in_in_any_case(client):
    cell = make_cell(capacity=2)
    signup = client.post("/signup/", {"email": "Ada.Lovelace@Example.COM", "password": "a-long-enough-passphrase",
                                      "name": "analytical", "region": cell["reef"].region.pk})
    assert signup.status_code == 302
    for typed in ("ada.lovelace@example.com", "ADA.LOVELACE@EXAMPLE.COM", "  Ada.Lovelace@Example.COM "):
        client.logout()
        response = _login(client, typed, "a-long-enough-passphrase")
        assert response.status_code == 302 and response["Location"] == "/instances/", typed
    # The e-mail is one account whatever its case: a second signup with other capitals is refused.
    client.logout()
    again = client.post("/signup/", {"email": "ADA.lovelace@example.com", "password": "a-long-enough-passphrase",
                                     "name": "difference", "region": cell["reef"].region.pk})
    assert again.status_code == 400 and "exists" in again.content.decode()


def test_staff_log_in_to_the_admin_whatever_the_case_of_their_name(client):
    make_user(username="grace", email="grace@example.com", is_staff=True)
    response = _login(client, "Grace@Example.com", path="/admin/login/")
    assert response.status_code == 302


def test_signup_password_similar_to_the_email_is_refused_on_its_field(client):
    cell = make_cell(capacity=2)
    response = client.post("/signup/", {"email": "margaret.hamilton@example.com", "password": "margarethamilton",
                                        "name": "apollo", "region": cell["reef"].region.pk})
    assert response.status_code == 400
    assert "too similar" in response.context["form"].errors["password"][0]
    # The input points at its error by id, and that id exists on the page.
    page = response.content.decode()
    described = re.search(r'<input[^>]*name="password"[^>]*aria-describedby="([^"]+)"', page).group(1)
    assert "error-password" in described.split() and 'id="error-password"' in page


def test_password_reset_through_the_mail_outbox(client):
    user = make_user(email="ada@example.com")
    response = client.post("/password-reset/", {"email": "ADA@example.com"})
    assert response.status_code == 302 and response["Location"] == "/password-reset/sent/"
    (message,) = mail.outbox
    assert message.to == ["ada@example.com"] and "password" in message.subject.lower()
    link = re.search(r"https?://[^/]+(/password-reset/\S+/\S+/)", message.body).group(1)

    form_page = client.get(link, follow=True)
    assert form_page.status_code == 200 and form_page.context["validlink"]
    done = client.post(form_page.redirect_chain[-1][0], {"new_password1": "a brand new passphrase",
                                                          "new_password2": "a brand new passphrase"})
    assert done.status_code == 302 and done["Location"] == "/password-reset/done/"
    user.refresh_from_db()
    assert user.check_password("a brand new passphrase") and not user.check_password(PASSWORD)
    # The link worked once.
    assert not client.get(link, follow=True).context["validlink"]


def test_password_reset_for_an_unknown_address_sends_nothing_and_says_the_same(client):
    response = client.post("/password-reset/", {"email": "nobody@example.com"})
    assert response.status_code == 302 and response["Location"] == "/password-reset/sent/"
    assert mail.outbox == []


def test_password_change_keeps_the_customer_logged_in(client):
    user = make_user()
    client.force_login(user)
    page = client.get("/account/password/")
    assert page.status_code == 200 and "site/site" in page.content.decode()  # the site's own style
    response = client.post("/account/password/", {"old_password": PASSWORD, "new_password1": "another fine passphrase",
                                                  "new_password2": "another fine passphrase"})
    assert response.status_code == 302 and response["Location"] == "/account/password/done/"
    user.refresh_from_db()
    assert user.check_password("another fine passphrase")
    assert client.get("/account/").status_code == 200


@pytest.fixture
def limit(settings):
    settings.AXES_FAILURE_LIMIT = 3
    return 3


def test_site_lockout_is_per_account_and_address_and_ends_after_the_cool_off(client, limit):
    make_user(email="ada@example.com", username="ada@example.com")
    make_user(email="bob@example.com", username="bob@example.com")
    for attempt in range(limit - 1):
        assert _login(client, "ada@example.com", "wrong").status_code == 200, attempt
    # Capitals are the same account: the last allowed failure locks the pair out.
    locked = _login(client, "ADA@example.com", "wrong")
    assert locked.status_code == 429 and "Too many" in locked.content.decode()
    assert _login(client, "ada@example.com").status_code == 429  # even with the right password
    # Another address, same account: not locked. Same address, another account: not locked.
    assert _login(client, "ada@example.com", address=B).status_code == 302
    client.logout()
    assert _login(client, "bob@example.com").status_code == 302
    client.logout()
    # The cool-off passes: the pair may log in again.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert _login(client, "ada@example.com").status_code == 302


def test_staff_reset_a_lockout(client, limit):
    make_user(email="ada@example.com", username="ada@example.com")
    for _ in range(limit):
        _login(client, "ada@example.com", "wrong")
    assert _login(client, "ada@example.com").status_code == 429
    call_command("axes_reset_username", "ada@example.com")
    assert _login(client, "ada@example.com").status_code == 302


def test_admin_login_locks_out_too(client, limit):
    make_user(username="grace", is_staff=True)
    for _ in range(limit):
        _login(client, "grace", "wrong", path="/admin/login/")
    assert _login(client, "grace", path="/admin/login/").status_code == 429
    assert _login(client, "grace", path="/admin/login/", address=B).status_code == 302


def test_password_grant_gives_a_first_token_without_a_browser(client):
    make_user(email="ada@example.com", username="ada@example.com")
    response = _obtain(client, "Ada@Example.com", name="ci")
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "ci" and body["token"].startswith("ch_")
    listing = client.get("/api/v1/tokens/", HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    assert listing.status_code == 200 and listing.json()["results"][0]["token"] is None  # shown once only
    assert AuditEvent.objects.filter(action="token.obtain", outcome="succeeded").count() == 1


def test_password_grant_refusals_are_in_the_api_error_shape(client, limit):
    make_user(email="ada@example.com", username="ada@example.com")
    missing = _obtain(client, "ada@example.com", password="")
    assert missing.status_code == 400 and "password" in missing.json()["error"]["fields"]
    wrong = _obtain(client, "ada@example.com", "wrong")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_credentials"
    for _ in range(limit - 1):
        last = _obtain(client, "ada@example.com", "wrong")
    assert last.status_code == 429 and last.json()["error"]["code"] == "locked_out"
    assert _obtain(client, "ada@example.com").status_code == 429
    # Keyed by account and address: another client (address) of the same account is not locked out.
    assert _obtain(client, "ada@example.com", address=B).status_code == 201
    assert ApiToken.objects.count() == 1
    assert AuditEvent.objects.filter(action="token.obtain", outcome="refused").count() >= limit


def test_password_grant_is_throttled_per_address(client):
    for _ in range(10):  # CELLHUB_TOKEN_OBTAIN_RATE, 10/minute
        assert _obtain(client, f"nobody{_}@example.com", "wrong").status_code == 401
    throttled = _obtain(client, "someone@example.com", "wrong")
    assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "throttled"


def test_site_signup_is_throttled_per_address(client):
    cell = make_cell(capacity=2)
    bad = {"email": "not-an-email", "password": "x", "name": "x", "region": cell["reef"].region.pk}
    for _ in range(20):  # CELLHUB_SIGNUP_RATE, 20/hour
        assert client.post("/signup/", bad).status_code == 400
    throttled = client.post("/signup/", {**bad, "email": "ok@example.com"})
    assert throttled.status_code == 429 and "Too many signups" in throttled.content.decode()
    assert AuditEvent.objects.filter(action="instance.signup", reason="throttled").count() == 1


def test_tokens_page_creates_shows_once_lists_and_revokes(client):
    user = make_user()
    client.force_login(user)
    created = client.post("/account/", {"name": "deploy bot", "expires_at": ""})
    assert created.status_code == 201 and created["Cache-Control"] == "no-store"
    plaintext = re.search(r'value="(ch_[^"]+)"', created.content.decode()).group(1)
    api = {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}
    client.logout()
    assert client.get("/api/v1/tokens/", **api).status_code == 200

    client.force_login(user)
    page = client.get("/account/").content.decode()
    assert "deploy bot" in page and plaintext not in page  # listed, never shown again
    token = ApiToken.objects.get()
    assert client.post(f"/account/tokens/{token.pk}/revoke/").status_code == 302
    client.logout()
    assert client.get("/api/v1/tokens/", **api).status_code == 401
    actions = set(AuditEvent.objects.filter(target_type="apitoken").values_list("action", flat=True))
    assert actions == {"token.create", "token.revoke"}


def test_customers_cannot_revoke_others_tokens(client):
    token, _ = ApiToken.issue(user=make_user(), name="theirs")
    client.force_login(make_user())
    assert client.post(f"/account/tokens/{token.pk}/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_token_expiry_in_the_past_is_refused_on_its_field(client):
    client.force_login(make_user())
    response = client.post("/account/", {"name": "old", "expires_at": "2001-01-01T00:00"})
    assert response.status_code == 400 and "future" in response.context["form"].errors["expires_at"][0]
    assert ApiToken.objects.count() == 0
