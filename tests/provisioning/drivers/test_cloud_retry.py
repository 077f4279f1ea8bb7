"""``cloud_call``: the one backoff helper, fed the SDKs' own exception objects."""
from __future__ import annotations

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.core.rest import HttpRequest
from azure.identity import CredentialUnavailableError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException

from provisioning.drivers import cloud_retry
from provisioning.drivers.base import PermanentDriverError, TransientDriverError
from provisioning.drivers.cloud_retry import (
    CloudConflictError,
    CloudNotFoundError,
    backoff_delay,
    cloud_call,
    require_config,
)
from tests.provisioning.drivers.azure_transport import ArmTransport


@pytest.fixture
def sleeps(monkeypatch, settings):
    """Backoff as in production (0.5 s doubling), the sleeps recorded instead of slept."""
    settings.CELLHUB = {**settings.CELLHUB, "CLOUD_BACKOFF": 0.5, "CLOUD_BACKOFF_MAX": 20.0, "CLOUD_ATTEMPTS": 5}
    recorded = []
    monkeypatch.setattr(cloud_retry.time, "sleep", recorded.append)
    return recorded


def _script(*outcomes):
    """A callable answering ``outcomes`` in turn: an exception is raised, anything else returned."""
    calls = []

    def call():
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    call.calls = calls
    return call


def _aws_error(code, status, operation="CreateBucket"):
    return ClientError({"Error": {"Code": code, "Message": f"{code} says no"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def _azure_error(status, code="SomeError", headers=None):
    response = ArmTransport()._response(
        HttpRequest("PUT", "https://management.azure.com/x"), status,
        {"error": {"code": code, "message": f"{code} says no"}}, headers,
    )
    return HttpResponseError(response=response)


@pytest.mark.parametrize("code", ["Throttling", "ThrottlingException", "RequestLimitExceeded", "SlowDown"])
def test_aws_throttling_is_retried_with_doubling_backoff(sleeps, code):
    call = _script(_aws_error(code, 400), _aws_error(code, 503), "made")
    assert cloud_call("create bucket b", call) == "made"
    assert len(call.calls) == 3
    assert sleeps == [0.5, 1.0]


def test_retries_run_out_into_a_transient_error_naming_the_call(sleeps):
    call = _script(*[_aws_error("Throttling", 429)] * 5)
    with pytest.raises(TransientDriverError, match="create bucket b: still failing after 5 attempts"):
        cloud_call("create bucket b", call)
    assert len(call.calls) == 5
    assert sleeps == [0.5, 1.0, 2.0, 4.0]


def test_backoff_is_capped(settings):
    settings.CELLHUB = {**settings.CELLHUB, "CLOUD_BACKOFF": 0.5, "CLOUD_BACKOFF_MAX": 20.0}
    assert backoff_delay(10) == 20.0
    assert backoff_delay(1, retry_after=7) == 7
    assert backoff_delay(1, retry_after=600) == 20.0
    settings.CELLHUB = {**settings.CELLHUB, "CLOUD_BACKOFF": 0}
    assert backoff_delay(3, retry_after=30) == 0  # tests switch the waiting off entirely


def test_a_bad_request_is_permanent_at_once(sleeps):
    call = _script(_aws_error("InvalidParameterValue", 400))
    with pytest.raises(PermanentDriverError, match="create bucket b was refused: InvalidParameterValue"):
        cloud_call("create bucket b", call)
    assert len(call.calls) == 1 and sleeps == []


def test_not_found_and_conflict_by_status_or_listed_code(sleeps):
    with pytest.raises(CloudNotFoundError, match="read x: not found"):
        cloud_call("read x", _script(_aws_error("NoSuchThing", 404)))
    with pytest.raises(CloudNotFoundError):
        cloud_call("read x", _script(_aws_error("DBSnapshotNotFound", 400)), not_found=("DBSnapshotNotFound",))
    with pytest.raises(CloudConflictError) as conflict:
        cloud_call("make x", _script(_aws_error("BucketAlreadyOwnedByYou", 409)))
    assert conflict.value.code == "BucketAlreadyOwnedByYou"
    assert isinstance(conflict.value, PermanentDriverError)
    assert sleeps == []


def test_missing_aws_credentials_say_what_to_set(sleeps):
    with pytest.raises(PermanentDriverError) as failure:
        cloud_call("describe x", _script(NoCredentialsError()))
    assert "AWS credentials not found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile" in str(failure.value)


def test_a_connection_failure_is_retried(sleeps):
    call = _script(EndpointConnectionError(endpoint_url="https://rds.us-east-1.amazonaws.com"), "ok")
    assert cloud_call("describe x", call) == "ok"
    assert sleeps == [0.5]


def test_azure_throttling_honours_retry_after(sleeps):
    call = _script(_azure_error(429, "TooManyRequests", {"Retry-After": "3"}), _azure_error(503), "ok")
    assert cloud_call("put db", call) == "ok"
    assert sleeps == [3.0, 1.0]


def test_azure_client_errors(sleeps):
    with pytest.raises(PermanentDriverError, match="put db was refused: .*InvalidParameter"):
        cloud_call("put db", _script(_azure_error(400, "InvalidParameter")))
    with pytest.raises(CloudNotFoundError):
        cloud_call("get db", _script(_azure_error(404, "ResourceNotFound")))
    with pytest.raises(CloudConflictError) as conflict:
        cloud_call("put share", _script(_azure_error(409, "ShareBeingDeleted")))
    assert conflict.value.code == "ShareBeingDeleted"


@pytest.mark.parametrize("error", [CredentialUnavailableError("no identity"), ClientAuthenticationError("no token")])
def test_missing_azure_credentials_say_what_to_set(sleeps, error):
    with pytest.raises(PermanentDriverError, match="Azure credentials not found: set AZURE_TENANT_ID"):
        cloud_call("get db", _script(error))


def test_kubernetes_errors(sleeps):
    assert cloud_call("create ns", _script(ApiException(status=429, reason="Too Many Requests"), "ok")) == "ok"
    with pytest.raises(PermanentDriverError, match="create ns was refused: 422 Unprocessable"):
        cloud_call("create ns", _script(ApiException(status=422, reason="Unprocessable Entity")))
    with pytest.raises(CloudConflictError):
        cloud_call("create ns", _script(ApiException(status=409, reason="Conflict")))
    with pytest.raises(PermanentDriverError, match="Kubernetes config not found"):
        cloud_call("load config", _script(ConfigException("Invalid kube-config file.")))


def test_other_exceptions_pass_through_untouched(sleeps):
    bug = ValueError("a bug, not a cloud failure")
    call = _script(bug)
    with pytest.raises(ValueError) as raised:
        cloud_call("x", call)
    assert raised.value is bug and len(call.calls) == 1
    transient = TransientDriverError("already sorted")
    with pytest.raises(TransientDriverError) as raised:
        cloud_call("x", _script(transient))
    assert raised.value is transient and sleeps == []


def test_require_config_names_every_missing_key():
    with pytest.raises(PermanentDriverError, match="pool p: config is missing subscription_id, server"):
        require_config({"resource_group": "rg", "server": ""}, ["subscription_id", "resource_group", "server"],
                       where="pool p")
    assert require_config({"a": 1}, ["a"], where="p") == {"a": 1}
