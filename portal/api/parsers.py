"""The API reads JSON (and forms) only, and refuses a body it cannot safely read before any work starts.

Every refusal is a DRF exception, so it leaves through the API's error handler in the one error shape:
a body that is not JSON → 400, nested deeper than Python can parse → 400, carrying a NUL character (which
PostgreSQL cannot store) → 400 naming where, larger than ``DATA_UPLOAD_MAX_MEMORY_SIZE`` → 413.
"""
import codecs

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.utils import json


class BodyTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "too_large"


def body_too_large(content_length: int) -> BodyTooLarge | None:
    """The refusal for a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes, or None when it fits."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is not None and content_length > limit:
        return BodyTooLarge(f"The request body is larger than {limit} bytes.")
    return None


def nul_path(value, path: str = "") -> str | None:
    """Where in parsed JSON a string (or key) holds a NUL character, as ``a.b[2]``; None if nowhere."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return where or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return where or "body"
                stack.append((child, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(item))
    return None


class HubJSONParser(JSONParser):
    """DRF's JSON parser, bounded: size, depth and NUL characters are refused as client errors."""

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        request = parser_context.get("request")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1) if limit is not None else stream.read()
        if limit is not None and len(raw) > limit:
            raise body_too_large(len(raw))
        encoding = parser_context.get("encoding") or (request and request.encoding) or settings.DEFAULT_CHARSET
        try:
            text = codecs.decode(raw, encoding)
        except (UnicodeDecodeError, LookupError) as error:
            raise exceptions.ParseError(f"The body is not valid {encoding}: {error}") from None
        try:
            data = json.loads(text) if self.strict else json.loads(text, parse_constant=None)
        except ValueError as error:
            raise exceptions.ParseError(f"JSON parse error - {error}") from None
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
        where = nul_path(data)
        if where is not None:
            raise exceptions.ValidationError({where: ["NUL characters are not allowed."]})
        return data
