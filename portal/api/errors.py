"""One JSON shape for every API error: ``{"error": {"code", "message", "fields"}}``.

DRF's own errors, the hub's refusals (illegal state changes → 409 naming the current state, capacity,
signup refusals) and anything unexpected (→ 500 without a stack trace) all leave in this shape.
"""
import logging

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from cells.errors import INVALID, NO_CAPACITY, Refused
from portal.api.parsers import BodyTooLarge

logger = logging.getLogger(__name__)
CAPACITY_RETRY_AFTER_SECONDS = 300


def error_body(code: str, message: str, fields: dict | None = None, **extra) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}, **extra}}


class HubRefusal(exceptions.APIException):
    """A refusal the hub decided (not a malformed request): carries its own code and status."""

    def __init__(self, message: str, *, code: str, status_code: int, fields: dict | None = None, **extra):
        super().__init__(message, code)
        self.status_code = status_code
        self.fields = fields or {}
        self.extra = extra


# The HTTP status of each refusal code; a code not listed is a 409 (the request is fine, the hub's state says no).
REFUSAL_STATUS = {INVALID: status.HTTP_400_BAD_REQUEST}


def refusal_response_of(refusal: Refused) -> "HubRefusal":
    """The API's reading of any refusal of the hub: status from its code, the field it names, its facts."""
    message = refusal.message
    if refusal.code == NO_CAPACITY:  # the customer-facing promise; the reason itself is for staff
        message = "We are adding capacity in this region; please try again in a few minutes."
    fields = {}
    if refusal.code == INVALID:
        fields = {refusal.field or "non_field_errors": [message]}
    extra = dict(refusal.extra)
    if refusal.current_state is not None:
        extra["current_state"] = refusal.current_state
    status_code = REFUSAL_STATUS.get(refusal.code, status.HTTP_409_CONFLICT)
    return HubRefusal(message, code=refusal.code, status_code=status_code, fields=fields, **extra)


def _translate(exc):
    """Turn the hub's own exceptions (and Django's) into API exceptions."""
    if isinstance(exc, Refused):
        return refusal_response_of(exc)
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return exceptions.ValidationError(fields)
    if isinstance(exc, IntegrityError):  # a rule the database enforces that validation did not catch first
        return HubRefusal("This conflicts with a rule of the hub: " + str(exc).splitlines()[0], code="conflict",
                          status_code=status.HTTP_409_CONFLICT)
    if isinstance(exc, RequestDataTooBig):  # a form body over DATA_UPLOAD_MAX_MEMORY_SIZE
        return BodyTooLarge()
    if isinstance(exc, Http404):
        return exceptions.NotFound()
    if isinstance(exc, PermissionDenied):
        return exceptions.PermissionDenied()
    return exc


def api_exception_handler(exc, context):
    exc = _translate(exc)
    if isinstance(exc, HubRefusal):
        response = Response(
            error_body(exc.get_codes(), str(exc.detail), exc.fields, **exc.extra),
            status=exc.status_code,
        )
        if exc.get_codes() == NO_CAPACITY:
            response["Retry-After"] = str(CAPACITY_RETRY_AFTER_SECONDS)
        return response
    response = exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled API error", exc_info=exc)
        return Response(error_body("server_error", "The hub failed to handle this request; it has been logged."),
                        status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    if isinstance(exc, exceptions.ValidationError):
        data = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = error_body("invalid", "The request has invalid fields.", _plain(data))
    else:
        code = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        response.data = error_body(code if isinstance(code, str) else "error", str(getattr(exc, "detail", exc)))
    return response


def _plain(detail):
    if isinstance(detail, dict):
        return {key: _plain(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_plain(item) for item in detail]
    return str(detail)


def json_not_found(request, exception=None):
    """404 for paths outside the API's routes, in the API's shape (installed for /api/ by portal.urls)."""
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def json_bad_request(request, exception=None):
    """400 (413 for a body over the size limit) for /api/ requests Django refused before any view ran."""
    if isinstance(exception, RequestDataTooBig):
        return JsonResponse(error_body("too_large", "The request body is too large."), status=413)
    return JsonResponse(error_body("bad_request", "Bad request."), status=400)


def json_server_error(request):
    return JsonResponse(error_body("server_error", "The hub failed to handle this request; it has been logged."),
                        status=500)
