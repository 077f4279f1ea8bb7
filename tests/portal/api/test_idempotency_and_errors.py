"""Idempotency keys and the one error shape."""
import pytest

from cells.models import Instance, Operation
from tests.portal.api.conftest import token_client

pytestmark = pytest.mark.django_db


def _signup(client, name, key=None, region="x"):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post("/api/v1/instances/", {"name": name, "region": region}, format="json", **headers)


def test_a_repeated_signup_key_returns_the_first_reply_and_starts_nothing(world):
    client, region = world["clients"]["owner"], world["cell"]["reef"].region.slug
    first = _signup(client, "keyed", key="k-1", region=region)
    again = _signup(client, "keyed", key="k-1", region=region)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again["Location"] == first["Location"]
    assert again["Idempotent-Replayed"] == "true" and not first.has_header("Idempotent-Replayed")
    assert Instance.objects.filter(name="keyed").count() == 1
    assert Operation.objects.filter(instance__name="keyed").count() == 1


def test_a_key_reused_for_another_request_is_refused(world):
    client, region = world["clients"]["owner"], world["cell"]["reef"].region.slug
    _signup(client, "keyed", key="k-2", region=region)
    response = _signup(client, "other-name", key="k-2", region=region)
    assert response.status_code == 422 and response.json()["error"]["code"] == "idempotency_key_reused"
    assert not Instance.objects.filter(name="other-name").exists()


def test_keys_belong_to_their_user(world):
    region = world["cell"]["reef"].region.slug
    assert _signup(world["clients"]["owner"], "one", key="shared", region=region).status_code == 202
    assert _signup(world["clients"]["other"], "two", key="shared", region=region).status_code == 202


def test_action_keys_stop_once(world):
    client = world["clients"]["owner"]
    first = client.post("/api/v1/instances/mine/stop/", HTTP_IDEMPOTENCY_KEY="stop-1")
    second = client.post("/api/v1/instances/mine/stop/", HTTP_IDEMPOTENCY_KEY="stop-1")
    assert first.status_code == second.status_code == 202 and first.json()["id"] == second.json()["id"]
    assert Operation.objects.filter(instance=world["mine"], kind="stop").count() == 1
    # Without a key a second stop is refused: one is already queued.
    third = client.post("/api/v1/instances/mine/stop/")
    assert third.status_code == 409 and third.json()["error"]["code"] == "operation_in_progress"


def test_a_failed_request_releases_its_key(world):
    client, region = world["clients"]["owner"], world["cell"]["reef"].region.slug
    assert _signup(client, "ww", key="k-3", region=region).status_code == 400
    # Nothing was started, so the key is free for the corrected request.
    assert _signup(client, "fixed-name", key="k-3", region=region).status_code == 202


def _error(response):
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    error = response.json()["error"]
    assert set(error) >= {"code", "message", "fields"}
    return error


def test_bad_input_gets_400_with_field_messages(world):
    response = _signup(world["clients"]["owner"], "Bad_Name", region="nowhere")
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "invalid"
    assert "lowercase letters" in error["fields"]["name"][0] and "region" in error["fields"]


def test_taken_and_reserved_names(world):
    region = world["cell"]["reef"].region.slug
    assert "is taken" in _error(_signup(world["clients"]["owner"], "mine", region=region))["fields"]["name"][0]
    assert "reserved" in _error(_signup(world["clients"]["owner"], "admin", region=region))["fields"]["name"][0]


def test_illegal_state_change_is_409_naming_the_current_state(world):
    type(world["mine"]).objects.filter(pk=world["mine"].pk).update(state="decommissioned")
    response = world["clients"]["owner"].post("/api/v1/instances/mine/stop/")
    assert response.status_code == 409
    error = _error(response)
    assert error["code"] == "illegal_state" and error["current_state"] == "decommissioned"
    assert "is decommissioned" in error["message"]


def test_no_capacity_is_409_with_retry_after(world):
    from cells.models import Reef

    Reef.objects.update(max_instances=2)  # both slots taken by the world's instances
    response = _signup(world["clients"]["owner"], "one-too-many", region=world["cell"]["reef"].region.slug)
    assert response.status_code == 409 and _error(response)["code"] == "no_capacity"
    assert response["Retry-After"] == "300"


@pytest.mark.parametrize("path", ["/api/v1/no-such-thing/", "/api/nothing", "/api/v1/instances/nobody/"])
def test_not_found_is_json(world, path):
    response = world["clients"]["staff"].get(path)
    assert response.status_code == 404 and _error(response)["code"] == "not_found"


def test_unauthenticated_and_bad_tokens_are_401(world):
    assert _error(token_client().get("/api/v1/instances/"))["code"] == "not_authenticated"
    bad = token_client()
    bad.credentials(HTTP_AUTHORIZATION="Bearer ch_nope_nope")
    response = bad.get("/api/v1/instances/")
    assert response.status_code == 401 and _error(response)["code"] == "authentication_failed"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_method_not_allowed_is_json(world):
    response = world["clients"]["staff"].delete("/api/v1/instances/mine/")
    assert response.status_code == 405 and _error(response)["code"] == "method_not_allowed"


def test_server_error_handler_answers_json_for_api_paths(rf):
    from portal.urls import handler500

    response = handler500(rf.get("/api/v1/instances/"))
    assert response.status_code == 500 and b'"server_error"' in response.content
    assert b"Traceback" not in response.content



def test_pool_provider_must_match_kind_over_the_api(world):
    response = world["clients"]["staff"].post(
        "/api/v1/pools/", {"reef": world["cell"]["reef"].pk, "name": "wrong", "kind": "storage",
                           "provider": "postgres", "capacity": 10}, format="json")
    assert response.status_code == 400
    assert "local_fs" in response.json()["error"]["fields"]["provider"][0]


def test_duplicate_reef_slug_is_a_field_error(world):
    reef = world["cell"]["reef"]
    response = world["clients"]["staff"].post(
        "/api/v1/reefs/", {"region": reef.region.slug, "slug": reef.slug, "max_instances": 5}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"


def test_backup_of_a_decommissioned_instance_is_409_naming_its_state(world):
    type(world["mine"]).objects.filter(pk=world["mine"].pk).update(state="decommissioned")
    response = world["clients"]["owner"].post("/api/v1/instances/mine/backup/", {"kind": "database"}, format="json")
    assert response.status_code == 409
    error = _error(response)
    assert error["current_state"] == "decommissioned" and "is decommissioned" in error["message"]


def test_decommission_needs_the_typed_name(world):
    response = world["clients"]["owner"].post("/api/v1/instances/mine/decommission/", {"confirm": "nope"},
                                              format="json")
    assert response.status_code == 400 and "type the instance's name" in _error(response)["fields"]["confirm"][0]
    world["mine"].refresh_from_db()
    assert world["mine"].state == "running"
    missing = world["clients"]["owner"].post("/api/v1/instances/mine/decommission/", {}, format="json")
    assert missing.status_code == 400 and "confirm" in _error(missing)["fields"]
