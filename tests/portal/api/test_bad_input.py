"""Every bad input gets a 4xx in the one error shape, before any work starts (and a write is still audited)."""
import base64

import pytest
from django.test import Client

from cells.models import AuditEvent, Operation

pytestmark = pytest.mark.django_db


def _shape(response, status):
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert set(body["error"]) >= {"code", "message", "fields"}
    return body["error"]


def _raw_post(world, path, body: bytes, content_type="application/json", **extra):
    return world["clients"]["owner"].generic("POST", path, body, content_type=content_type, **extra)


def _stop(world):
    return f"/api/v1/instances/{world['mine'].name}/stop/"


def test_malformed_json_on_stop_queues_nothing_and_is_a_400_audited_as_refused(world):
    before = Operation.objects.count()
    error = _shape(_raw_post(world, _stop(world), b"{bad"), 400)
    assert error["code"] == "parse_error"
    assert Operation.objects.count() == before
    (row,) = AuditEvent.objects.filter(action="instance.stop")
    assert row.outcome == "refused"


@pytest.mark.parametrize("content_type, body", [
    ("text/plain", b"stop please"),
    ("application/xml", b"<stop/>"),
])
def test_bodies_that_are_not_json_or_forms_are_415(world, content_type, body):
    before = Operation.objects.count()
    _shape(_raw_post(world, _stop(world), body, content_type=content_type), 415)
    assert Operation.objects.count() == before


def test_a_body_that_is_not_utf8_is_400(world):
    before = Operation.objects.count()
    _shape(_raw_post(world, _stop(world), b'{"reason": "\xff\xfe"}'), 400)
    assert Operation.objects.count() == before


def test_json_nested_100000_deep_is_400(world):
    before = Operation.objects.count()
    _shape(_raw_post(world, _stop(world), b"[" * 100_000 + b"]" * 100_000), 400)
    assert Operation.objects.count() == before


def test_a_nul_character_in_a_json_string_is_400_naming_the_field(world):
    error = _shape(_raw_post(world, "/api/v1/instances/", b'{"name": "a\\u0000b", "region": "x"}'), 400)
    assert "name" in error["fields"]


def test_a_5mb_body_is_413_in_the_error_shape(world):
    before = Operation.objects.count()
    body = b'{"reason": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    error = _shape(_raw_post(world, _stop(world), body), 413)
    assert error["code"] == "too_large"
    assert Operation.objects.count() == before


def test_a_5mb_form_body_is_413_in_the_error_shape(world):
    body = b"reason=" + b"x" * (5 * 1024 * 1024)
    _shape(_raw_post(world, _stop(world), body, content_type="application/x-www-form-urlencoded"), 413)


def test_a_5mb_form_body_refused_before_the_view_is_413_in_the_error_shape(world, staff_user):
    # A session-authenticated POST is read by the CSRF check before any API view runs.
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    body = "reason=" + "x" * (5 * 1024 * 1024)
    response = client.generic("POST", _stop(world), body, content_type="application/x-www-form-urlencoded")
    assert response.status_code in (403, 413)
    assert response.json()["error"]


@pytest.mark.parametrize("cursor", [
    "forged", base64.b64encode(b"p=abc&r=0").decode(), base64.b64encode(b"o=x&p=\x00").decode(),
    base64.b64encode(b"p=1e999").decode(),
])
@pytest.mark.parametrize("path", ["/api/v1/instances/", "/api/v1/regions/", "/api/v1/operations/"])
def test_a_forged_cursor_is_404_in_the_error_shape(world, path, cursor):
    response = world["clients"]["staff"].get(path, {"cursor": cursor})
    assert response.status_code in (400, 404)
    _shape(response, response.status_code)


@pytest.mark.parametrize("path", [
    "/api/v1/instances/mi%00ne/", "/api/v1/instances/mine%00/stop/", "/api/v1/regions/a%00b/",
    "/api/v1/tokens/%00/",
])
def test_a_nul_in_a_path_is_404_in_the_error_shape(world, path):
    _shape(world["clients"]["staff"].get(path), 404)


@pytest.mark.parametrize("query", ["name=a%00b", "state=run%00ning", "a%00b=1", "region=%00"])
def test_a_nul_in_a_filter_is_400_in_the_error_shape(world, query):
    _shape(world["clients"]["staff"].get(f"/api/v1/instances/?{query}"), 400)


def test_a_nul_character_in_a_form_field_is_400_naming_the_field(world):
    response = world["clients"]["staff"].post("/api/v1/regions/", {"slug": "nul", "name": "a\x00b"})
    assert "name" in _shape(response, 400)["fields"]
