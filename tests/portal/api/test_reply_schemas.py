"""Replies match the OpenAPI schema the API publishes (read from /api/schema/), checked by schemathesis's own
response validator: status, content type and body. The fuzz run (test_schema_fuzz.py) covers every operation with
generated input; these pin the replies that were once out of step with their schema, with bodies known not to be
empty."""
import pytest
import requests
import schemathesis

from tests.factories import make_reef

pytestmark = pytest.mark.django_db


def _published_schema(client):
    return schemathesis.openapi.from_dict(client.get("/api/schema/?format=json").json())


def _as_schemathesis_response(response, method: str, path: str) -> schemathesis.Response:
    """The Django test client's reply in the shape schemathesis validates (the same fields its WSGI transport
    records)."""
    return schemathesis.Response(
        status_code=response.status_code,
        headers={key: [value] for key, value in response.headers.items()},
        content=response.content,
        request=requests.Request(method, f"http://testserver{path}").prepare(),
        elapsed=0.0,
        verify=True,
    )


def test_the_top_up_202_reply_matches_its_schema(world):
    staff = world["clients"]["staff"]
    reef = make_reef(world["cell"]["reef"].region)  # no pools yet: the top-up orders one of each kind
    path = f"/api/v1/reefs/{reef.pk}/top-up/"
    response = staff.post(path, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert isinstance(body, list) and len(body) == 3
    assert {item["kind"] for item in body} == {"top_up"} and all(item["state"] == "queued" for item in body)

    operation = _published_schema(staff)["/api/v1/reefs/{id}/top-up/"]["POST"]
    operation.validate_response(_as_schemathesis_response(response, "POST", path))  # raises on any mismatch
