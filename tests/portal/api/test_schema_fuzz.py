"""Property-based run of schemathesis against the live OpenAPI schema, in process (WSGI):
no request it generates gets a 5xx, and every reply conforms to the schema (status, content type, body).

Every operation is exercised, DELETE included, with a staff token and with a customer's token. The CI run is
small (``CELLHUB_FUZZ_EXAMPLES``, default 12 per operation and role); the big run is the same test with more:

    CELLHUB_FUZZ_EXAMPLES=100 DATABASE_URL=… scripts/test tests/portal/api/test_schema_fuzz.py -p no:cacheprovider
"""
import os

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from portal.wsgi import application

pytestmark = [pytest.mark.django_db, pytest.mark.slow]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = int(os.environ.get("CELLHUB_FUZZ_EXAMPLES", "12"))


def test_schema_is_valid_openapi_and_covers_every_route(world):
    schema = world["clients"]["staff"].get("/api/schema/?format=json").json()
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    for route in ["/api/v1/instances/", "/api/v1/instances/{name}/stop/", "/api/v1/operations/{id}/",
                  "/api/v1/reefs/", "/api/v1/pools/", "/api/v1/shares/", "/api/v1/regions/", "/api/v1/tokens/"]:
        assert route in paths
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


@pytest.fixture
def keep_test_connection():
    """Like Django's test client: requests must not close the test's (transactional) connection."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.mark.parametrize("role", ["staff", "owner"])
def test_generated_requests_never_break_the_api(world, role, keep_test_connection):
    from portal.models import ApiToken

    _, token = ApiToken.issue(user=world["users"][role], name="fuzz")
    headers = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    failures, operations, cases = [], 0, 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
            suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy())
        def exercise(case):
            nonlocal cases
            cases += 1
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS, headers=headers)

        try:
            exercise()
        except Exception as error:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {error}")
    assert operations >= 20
    print(f"{role}: {operations} operations, {cases} cases, {len(failures)} failing")
    assert not failures, "\n\n".join(failures)
