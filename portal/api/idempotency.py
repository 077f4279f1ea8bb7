"""``Idempotency-Key`` for POSTs that start work: the first reply is remembered; a repeat gets it back.

The key is claimed (a unique row) before the work starts, so two concurrent requests with one key
never both start it: the second is told the first is in progress (409). A key reused with a different
request is refused (422). If the first request fails before replying, its claim is released.
"""
import functools
import hashlib
import json

from django.db import IntegrityError, transaction
from rest_framework import status
from rest_framework.response import Response

from portal.api.errors import HubRefusal
from portal.models import IdempotencyRecord

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255


def _fingerprint(request, args, kwargs) -> str:
    body = json.dumps(request.data, sort_keys=True, default=str) if request.data else ""
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def idempotent(view_method):
    """Decorate a ViewSet method (create or an action) to honour ``Idempotency-Key``."""

    @functools.wraps(view_method)
    def wrapper(self, request, *args, **kwargs):
        key = request.headers.get(HEADER)
        if not key:
            return view_method(self, request, *args, **kwargs)
        if len(key) > MAX_KEY_LENGTH:
            raise HubRefusal(f"{HEADER} is longer than {MAX_KEY_LENGTH} characters.", code="invalid",
                             status_code=status.HTTP_400_BAD_REQUEST, fields={HEADER: ["Too long."]})
        fingerprint = _fingerprint(request, args, kwargs)
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(user=request.user, key=key, fingerprint=fingerprint)
        except IntegrityError:
            record = IdempotencyRecord.objects.get(user=request.user, key=key)
            if record.fingerprint != fingerprint:
                raise HubRefusal(f"This {HEADER} was used for a different request.", code="idempotency_key_reused",
                                 status_code=status.HTTP_422_UNPROCESSABLE_ENTITY) from None
            if not record.status:
                raise HubRefusal(f"A request with this {HEADER} is still being processed.",
                                 code="idempotency_key_in_progress", status_code=status.HTTP_409_CONFLICT) from None
            response = Response(record.body, status=record.status, headers=record.headers)
            response[REPLAYED_HEADER] = "true"
            return response
        try:
            response = view_method(self, request, *args, **kwargs)
        except BaseException:
            record.delete()
            raise
        headers = {name: response[name] for name in ("Location",) if response.has_header(name)}
        IdempotencyRecord.objects.filter(pk=record.pk).update(status=response.status_code, body=response.data,
                                                              headers=headers)
        return response

    return wrapper
