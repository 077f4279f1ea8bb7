"""``POST /api/v1/pools/<id>/retire/``: staff retire a draining or failed pool nothing uses (202 with the operation);
refusals in the one error shape, 409 naming the pool's state and the instances still on it; the route is in the
OpenAPI schema."""
import pytest

from cells.choices import OperationKind, PoolKind, PoolStatus
from cells.models import AuditEvent, Operation, Pool
from tests.factories import make_pool

pytestmark = pytest.mark.django_db


def test_staff_retire_a_draining_pool_and_refusals_name_the_state_and_the_instances(
        world, sync_tasks, django_capture_on_commit_callbacks):
    staff, storage = world["clients"]["staff"], world["cell"]["storage"]

    available = staff.post(f"/api/v1/pools/{storage.pk}/retire/")
    assert available.status_code == 409
    error = available.json()["error"]
    assert error["code"] == "illegal_state" and error["current_state"] == "available" and error["fields"] == {}
    assert "available" in error["message"]

    staff.post(f"/api/v1/pools/{storage.pk}/drain/")
    in_use = staff.post(f"/api/v1/pools/{storage.pk}/retire/")
    assert in_use.status_code == 409
    error = in_use.json()["error"]
    assert (error["code"], error["current_state"]) == ("refused", "draining")
    assert error["instances"] == ["mine", "theirs"] and error["instance_count"] == 2
    assert "mine, theirs" in error["message"]
    assert not Operation.objects.filter(kind=OperationKind.RETIRE).exists()
    refused = AuditEvent.objects.filter(action="pool.retire", outcome="refused").latest("pk")
    assert refused.details["via"] == "api" and refused.details["status"] == 409

    spare = make_pool(world["cell"]["reef"], PoolKind.STORAGE, capacity=2, status=PoolStatus.DRAINING)
    with django_capture_on_commit_callbacks(execute=True):
        accepted = staff.post(f"/api/v1/pools/{spare.pk}/retire/", HTTP_IDEMPOTENCY_KEY="retire-spare")
    assert accepted.status_code == 202, accepted.content
    body = accepted.json()
    assert body["kind"] == "retire" and accepted["Location"] == body["url"]
    assert Pool.objects.get(pk=spare.pk).status == PoolStatus.RETIRED
    again = staff.post(f"/api/v1/pools/{spare.pk}/retire/", HTTP_IDEMPOTENCY_KEY="retire-spare")
    assert again.status_code == 202 and again.json()["id"] == body["id"] and again["Idempotent-Replayed"] == "true"
    assert Operation.objects.filter(kind=OperationKind.RETIRE).count() == 1


@pytest.mark.parametrize("role, code", [("anonymous", 401), ("owner", 403), ("readonly", 403)])
def test_only_staff_retire_pools(world, role, code):
    pool = make_pool(world["cell"]["reef"], PoolKind.STORAGE, capacity=1, status=PoolStatus.DRAINING)
    response = world["clients"][role].post(f"/api/v1/pools/{pool.pk}/retire/")
    assert response.status_code == code and set(response.json()) == {"error"}
    assert Pool.objects.get(pk=pool.pk).status == PoolStatus.DRAINING


def test_the_retire_route_is_in_the_schema(world):
    schema = world["clients"]["staff"].get("/api/schema/", HTTP_ACCEPT="application/json").json()
    route = schema["paths"]["/api/v1/pools/{id}/retire/"]["post"]
    assert route["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Operation"}
    assert "409" in route["responses"] and any(p["name"] == "Idempotency-Key" for p in route["parameters"])
    error = schema["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
    assert error["instances"]["type"] == "array" and error["instance_count"]["type"] == "integer"
