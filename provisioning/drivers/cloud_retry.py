"""One backoff helper for every cloud call, so throttling and failures read the same whatever the cloud.

``cloud_call(what, fn)`` runs ``fn()`` and sorts what it raises:

- throttling or an overloaded service (HTTP 429/503 and the 5xx gateway errors; botocore ``Throttling``,
  ``ThrottlingException``, ``RequestLimitExceeded``, ``SlowDown``…; a connection that failed or timed
  out) is retried with exponential backoff — ``CELLHUB["CLOUD_BACKOFF"]`` seconds (default 0.5), doubling,
  capped at ``CELLHUB["CLOUD_BACKOFF_MAX"]`` (default 20), honouring a ``Retry-After`` up to that cap —
  at most ``CELLHUB["CLOUD_ATTEMPTS"]`` times (default 5), then ``TransientDriverError``;
- "not found" (HTTP 404, or an error code the caller lists) raises ``CloudNotFoundError`` and
  "already exists" (HTTP 409, or a listed code) ``CloudConflictError``: both are
  ``PermanentDriverError`` s, so a caller that has no use for them fails cleanly, and a caller that
  makes a call idempotent catches them;
- missing or rejected credentials raise ``PermanentDriverError`` naming what to set;
- any other 4xx raises ``PermanentDriverError`` naming the call and the provider's message.

An exception that is not a cloud error (a bug) propagates unchanged. The SDKs are not imported here:
an exception is recognised through the SDK modules already loaded by the driver that raised it, so a
hub with only AWS pools never loads the Azure or Kubernetes SDKs.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from django.conf import settings

from provisioning.drivers.base import DriverError, PermanentDriverError, TransientDriverError

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# AWS reports throttling (and its own transient faults) with these codes, sometimes under HTTP 400.
AWS_RETRY_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "PriorRequestNotComplete",  # Route 53: a change to the same record is still in flight
        "ProvisionedThroughputExceededException",
        "BandwidthLimitExceeded",
        "EC2ThrottledException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
    }
)
AWS_CREDENTIALS_HINT = (
    "AWS credentials not found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile (AWS_PROFILE), "
    "or run with an instance/task role"
)
AZURE_CREDENTIALS_HINT = (
    "Azure credentials not found: set AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, "
    "use a managed identity, or sign in with `az login`"
)
KUBERNETES_CONFIG_HINT = (
    "Kubernetes config not found: set the pool's config 'kubeconfig' (a path) and 'context', "
    "set KUBECONFIG, or run the hub inside the cluster"
)


class CloudNotFoundError(PermanentDriverError):
    """The resource a cloud call named does not exist (HTTP 404 or an equivalent error code)."""


class CloudConflictError(PermanentDriverError):
    """The resource a cloud call would create exists already, or is busy (HTTP 409 or equivalent)."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Failure:
    """What a cloud exception means for the caller."""

    kind: str  # "retry", "not_found", "conflict", "credentials", "permanent"
    detail: str
    code: str = ""
    retry_after: float | None = None


def _module(name: str):
    return sys.modules.get(name)


def _retry_after(headers) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _by_status(status: int | None, code: str, detail: str, retry_after=None, not_found=(), conflict=()) -> Failure:
    if status in RETRY_STATUSES:
        return Failure("retry", detail, code, retry_after)
    if status == 404 or code in not_found:
        return Failure("not_found", detail, code)
    if status == 409 or code in conflict:
        return Failure("conflict", detail, code)
    if status in (401, 403):
        return Failure("permanent", f"not authorised ({status}): {detail}", code)
    return Failure("permanent", detail, code)


def _classify_botocore(exc: BaseException, not_found, conflict) -> Failure | None:
    exceptions = _module("botocore.exceptions")
    if exceptions is None:
        return None
    boto3_exceptions = _module("boto3.exceptions")
    if boto3_exceptions is not None and isinstance(exc, boto3_exceptions.S3UploadFailedError):
        # A failed (multipart) upload: boto3 wraps the part's ClientError; read it as that error.
        cause = exc.__cause__ or exc.__context__
        inner = _classify_botocore(cause, not_found, conflict) if cause is not None else None
        if inner is not None:
            return Failure(inner.kind, f"S3 upload failed: {inner.detail}", inner.code, inner.retry_after)
        return Failure("permanent", f"S3 upload failed: {exc}")
    if isinstance(exc, exceptions.NoCredentialsError | exceptions.PartialCredentialsError):
        return Failure("credentials", AWS_CREDENTIALS_HINT)
    if isinstance(exc, exceptions.NoRegionError):
        return Failure("credentials", "AWS region not set: give the pool's region a location (e.g. us-east-1)")
    if isinstance(exc, exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = f"{code}: {error.get('Message', '')}".strip(": ")
        if code in AWS_RETRY_CODES:
            return Failure("retry", detail, code)
        if code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException"):
            return Failure("credentials", f"AWS credentials rejected ({code}): {AWS_CREDENTIALS_HINT}")
        return _by_status(status, code, detail, None, not_found, conflict)
    connection_errors = (
        exceptions.EndpointConnectionError,
        exceptions.ConnectTimeoutError,
        exceptions.ReadTimeoutError,
        exceptions.ConnectionClosedError,
    )
    if isinstance(exc, connection_errors):
        return Failure("retry", f"connection failed: {exc}")
    return None


def _classify_azure(exc: BaseException, not_found, conflict) -> Failure | None:
    exceptions = _module("azure.core.exceptions")
    if exceptions is None:
        return None
    if isinstance(exc, exceptions.ClientAuthenticationError):
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            return Failure("credentials", f"Azure rejected the credential ({status}): {exc.message}")
        return Failure("credentials", f"{AZURE_CREDENTIALS_HINT} ({exc.message})")
    if isinstance(exc, exceptions.HttpResponseError):
        status = exc.status_code
        code = getattr(exc.error, "code", None) or ""
        response = getattr(exc, "response", None)
        retry_after = _retry_after(getattr(response, "headers", None))
        return _by_status(status, code, exc.message or str(exc), retry_after, not_found, conflict)
    if isinstance(exc, exceptions.ServiceRequestError | exceptions.ServiceResponseError):
        return Failure("retry", f"connection failed: {exc}")
    return None


def _classify_kubernetes(exc: BaseException, not_found, conflict) -> Failure | None:
    api_exceptions = _module("kubernetes.client.exceptions")
    config_exceptions = _module("kubernetes.config.config_exception")
    if config_exceptions is not None and isinstance(exc, config_exceptions.ConfigException):
        return Failure("credentials", f"{KUBERNETES_CONFIG_HINT} ({exc})")
    if api_exceptions is not None and isinstance(exc, api_exceptions.ApiException):
        detail = f"{exc.status} {exc.reason}: {(exc.body or '')[:300]}".strip()
        return _by_status(exc.status, "", detail, _retry_after(exc.headers), not_found, conflict)
    urllib3 = _module("urllib3.exceptions")
    if urllib3 is not None and isinstance(exc, urllib3.HTTPError):
        return Failure("retry", f"connection failed: {exc}")
    return None


def classify(exc: BaseException, *, not_found: Iterable[str] = (), conflict: Iterable[str] = ()) -> Failure | None:
    """What ``exc`` means, or ``None`` when it is no cloud SDK's error."""
    not_found, conflict = frozenset(not_found), frozenset(conflict)
    for classifier in (_classify_botocore, _classify_azure, _classify_kubernetes):
        failure = classifier(exc, not_found, conflict)
        if failure is not None:
            return failure
    return None


def backoff_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): doubling from the base, capped."""
    base = float(settings.CELLHUB.get("CLOUD_BACKOFF", 0.5))
    cap = float(settings.CELLHUB.get("CLOUD_BACKOFF_MAX", 20.0))
    delay = base * 2 ** (attempt - 1)
    if retry_after is not None and base > 0:
        delay = max(delay, retry_after)
    return min(delay, cap)


def cloud_call(
    what: str,
    fn: Callable[[], T],
    *,
    not_found: Iterable[str] = (),
    conflict: Iterable[str] = (),
    attempts: int | None = None,
) -> T:
    """Run ``fn()`` (one cloud call, safe to repeat), retrying throttling; see the module's docstring.

    ``what`` names the call in every message, e.g. ``"create S3 bucket cellhub-s1"``.
    Raises ``TransientDriverError`` when retries run out, ``CloudNotFoundError`` / ``CloudConflictError``
    for 404/409 (or the listed codes), ``PermanentDriverError`` for anything else a retry cannot fix.
    """
    attempts = attempts or int(settings.CELLHUB.get("CLOUD_ATTEMPTS", 5))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except DriverError:
            raise
        except Exception as exc:
            failure = classify(exc, not_found=not_found, conflict=conflict)
            if failure is None:
                raise
            if failure.kind == "retry":
                if attempt == attempts:
                    raise TransientDriverError(
                        f"{what}: still failing after {attempts} attempts ({failure.detail})"
                    ) from exc
                delay = backoff_delay(attempt, failure.retry_after)
                logger.info("%s: %s; retrying in %.1fs (attempt %d/%d)", what, failure.detail, delay, attempt,
                            attempts)
                time.sleep(delay)
                continue
            if failure.kind == "not_found":
                raise CloudNotFoundError(f"{what}: not found ({failure.detail})") from exc
            if failure.kind == "conflict":
                raise CloudConflictError(f"{what}: conflict ({failure.detail})", failure.code) from exc
            if failure.kind == "credentials":
                raise PermanentDriverError(f"{what}: {failure.detail}") from exc
            raise PermanentDriverError(f"{what} was refused: {failure.detail}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def require_config(config: dict, keys: Iterable[str], *, where: str) -> dict:
    """The values of ``keys`` in a pool's config; raises ``PermanentDriverError`` naming every missing one."""
    missing = [key for key in keys if not config.get(key)]
    if missing:
        raise PermanentDriverError(f"{where}: config is missing {', '.join(missing)}")
    return {key: config[key] for key in keys}


# Client factories: each SDK's own retries are turned off so that ``cloud_call`` is the one retry layer
# (two layers multiply: 10 SDK retries × 5 of ours would hold a worker for many minutes).


def azure_client(client_class, subscription_id: str, *, credential=None, transport=None, polling_interval=None):
    """An azure-mgmt client: ``DefaultAzureCredential`` unless a credential is given, no SDK retries.

    ``transport`` (an azure-core ``HttpTransport``) replaces the HTTP layer, as the tests do;
    ``polling_interval`` (seconds) overrides the long-running-operation poll period.
    """
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    kwargs = {"retry_total": 0}
    if transport is not None:
        kwargs["transport"] = transport
    if polling_interval is not None:
        kwargs["polling_interval"] = polling_interval
    return client_class(credential, subscription_id, **kwargs)


def aws_client(service: str, region: str | None):
    """A boto3 client for ``service`` in ``region`` (boto3's credential chain), no SDK retries.

    Raises ``PermanentDriverError`` when no region is known.
    """
    import boto3
    from botocore.config import Config

    if not region and service not in ("route53", "iam", "sts"):
        raise PermanentDriverError(f"AWS {service}: no region; set the region's location (e.g. us-east-1)")
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.client(service, region_name=region or "us-east-1", config=config)
