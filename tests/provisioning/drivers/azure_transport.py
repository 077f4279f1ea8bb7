"""An azure-core transport that answers like Azure Resource Manager, for driver tests.

It records every request (method, URL, query, JSON body) and answers from canned routes matched on
(method, URL-path regex). A route may answer as a long-running operation: the first response is
201/202 with an ``Azure-AsyncOperation`` header, the status URL answers ``InProgress`` once and then
``Succeeded``, and the final GET of the resource returns the canned body. A route may also be scripted
to answer 429 (``Retry-After: 0``) a number of times first, as ARM does when it throttles, and may give a
sequence of (status, body) answers, the last one repeating (a resource that appears once created).
Nothing leaves the process: every URL is answered here or with a 404 naming the request.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlparse

from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import CaseInsensitiveDict

OPERATIONS_HOST = "https://management.azure.com/test-operations"


@dataclass
class Recorded:
    method: str
    url: str
    path: str
    query: dict
    body: dict | list | None
    headers: dict = field(default_factory=dict)  # the data planes' ``x-ms-*`` headers (``AzureCloud``)


@dataclass
class Route:
    method: str
    pattern: re.Pattern
    status: int = 200
    body: object = None
    lro: bool | int = False  # True (or 201): a PUT answers 201 first; 202: it answers 202
    throttle: int = 0
    times_called: int = 0
    headers: dict = field(default_factory=dict)
    sequence: list = field(default_factory=list)


class _Internal:
    def close(self):
        pass


class ArmTransport(HttpTransport):
    """Routes are tried most recent first, so a test can override an earlier answer."""

    def __init__(self):
        self.requests: list[Recorded] = []
        self.routes: list[Route] = []
        self._operations: dict[str, list] = {}
        self._ids = itertools.count(1)

    # -- test API ---------------------------------------------------------------------------
    def add(
        self, method, path_regex, body=None, *, status=200, lro=False, throttle=0, headers=None, sequence=None
    ) -> Route:
        """Answer ``method`` on a URL path matching ``path_regex`` (searched, case-insensitive)."""
        route = Route(method.upper(), re.compile(path_regex, re.IGNORECASE), status, body, lro, throttle,
                      headers=headers or {}, sequence=list(sequence or []))
        self.routes.insert(0, route)
        return route

    def calls(self, method=None, path_regex=None) -> list[Recorded]:
        """The recorded requests to the API (status polls excluded), optionally filtered."""
        return [
            r
            for r in self.requests
            if not r.url.startswith(OPERATIONS_HOST)
            and (method is None or r.method == method.upper())
            and (path_regex is None or re.search(path_regex, r.path, re.IGNORECASE))
        ]

    # -- HttpTransport ----------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def open(self):
        pass

    def close(self):
        pass

    def send(self, request, **kwargs):
        parsed = urlparse(request.url)
        content = request.content if hasattr(request, "content") else request.data
        if isinstance(content, bytes | bytearray):
            content = content.decode()
        body = json.loads(content) if content else None
        self.requests.append(Recorded(request.method, request.url, parsed.path, parse_qs(parsed.query), body))

        if request.url.startswith(OPERATIONS_HOST):
            states = self._operations[parsed.path.rsplit("/", 1)[-1]]
            state = states.pop(0) if len(states) > 1 else states[0]
            return self._response(request, 200, {"status": state})

        for route in self.routes:
            if route.method == request.method and route.pattern.search(parsed.path):
                route.times_called += 1
                if route.times_called <= route.throttle:
                    error = {"error": {"code": "TooManyRequests", "message": "throttled by the test transport"}}
                    return self._response(request, 429, error, {"Retry-After": "0"})
                if route.lro and request.method in ("PUT", "DELETE", "POST", "PATCH"):
                    operation = f"op{next(self._ids)}"
                    self._operations[operation] = ["InProgress", "Succeeded"]
                    headers = {
                        "Azure-AsyncOperation": f"{OPERATIONS_HOST}/{operation}",
                        "Retry-After": "0",
                    }
                    status = 202 if request.method != "PUT" or route.lro == 202 else 201
                    return self._response(request, status, route.body if status == 201 else None, headers)
                if route.sequence:
                    status, body = route.sequence.pop(0) if len(route.sequence) > 1 else route.sequence[0]
                    return self._response(request, status, body, route.headers)
                return self._response(request, route.status, route.body, route.headers)
        error = {"error": {"code": "ResourceNotFound", "message": f"no route for {request.method} {parsed.path}"}}
        return self._response(request, 404, error)

    def _response(self, request, status, body, headers=None):
        content = b"" if body is None else json.dumps(body).encode()
        all_headers = CaseInsensitiveDict({"Content-Type": "application/json", "x-ms-request-id": "test"})
        all_headers.update(headers or {})
        response = HttpResponseImpl(
            request=request,
            internal_response=_Internal(),
            status_code=status,
            reason="OK" if status < 400 else "Error",
            content_type="application/json",
            headers=all_headers,
            stream_download_generator=lambda *a, **k: iter([content]),
        )
        response._content = content
        return response


class FakeCredential:
    """A TokenCredential that always has a token: the transport never checks it."""

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken("test-token", 9_999_999_999)

    def get_token_info(self, *scopes, options=None):
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo("test-token", 9_999_999_999)


class MissingCredential:
    """What DefaultAzureCredential does on a machine with no Azure identity at all."""

    def get_token(self, *scopes, **kwargs):
        from azure.identity import CredentialUnavailableError

        raise CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token")

    def get_token_info(self, *scopes, options=None):
        return self.get_token(*scopes)
