"""``Authorization: Bearer ch_<prefix>_<secret>`` — per-user API tokens, with failed attempts throttled per address."""
import hmac
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from portal.models import TOKEN_SCHEME, ApiToken, hash_token_secret

LAST_USED_RESOLUTION = timedelta(minutes=1)  # write last_used_at at most once a minute per token


def _client_address(request) -> str:
    return request.META.get("REMOTE_ADDR", "unknown")


def _failure_key(request) -> str:
    return f"cellhub:token-failures:{_client_address(request)}"


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """Tokens are looked up by prefix and proven by a constant-time comparison of the secret's hash.

    Expired, revoked or unknown tokens are refused with 401. After ``TOKEN_FAILURES_PER_WINDOW``
    failures from one address inside ``TOKEN_FAILURE_WINDOW_SECONDS`` every token attempt from it is
    answered 429 until the window passes.
    """

    keyword = "bearer"

    def authenticate(self, request):
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.encode():
            return None
        limit, window = settings.CELLHUB["TOKEN_FAILURES_PER_WINDOW"], settings.CELLHUB["TOKEN_FAILURE_WINDOW_SECONDS"]
        if cache.get(_failure_key(request), 0) >= limit:
            raise exceptions.Throttled(wait=window, detail="Too many failed token attempts from this address.")
        if len(parts) != 2:
            self._fail(request, window)
        try:
            scheme, prefix, secret = parts[1].decode().split("_", 2)
        except (UnicodeDecodeError, ValueError):
            self._fail(request, window)
        token = None
        if scheme == TOKEN_SCHEME:
            token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
        if (
            token is None
            or not hmac.compare_digest(token.secret_hash, hash_token_secret(secret))
            or not token.is_usable
            or not token.user.is_active
        ):
            self._fail(request, window)
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def _fail(self, request, window):
        key = _failure_key(request)
        cache.add(key, 0, timeout=window)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=window)
        raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")

    def authenticate_header(self, request):
        return 'Bearer realm="cellhub"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Tells the OpenAPI schema how to send the token."""

    target_class = "portal.api.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "ch_<prefix>_<secret>"}
