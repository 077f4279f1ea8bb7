"""``Authorization: Bearer ch_<prefix>_<secret>`` — per-user API tokens, with failed attempts throttled per address
and token."""
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


# Failures with no real token's prefix (guessed prefixes, malformed headers) count together per address.
UNKNOWN_TOKEN = "*"


def _failure_key(request, token_prefix: str) -> str:
    """One counter per client address *and* token: bad tokens from one address behind a proxy never lock out
    the other clients behind it, and guessing one token's secret is limited wherever it comes from."""
    return f"cellhub:token-failures:{_client_address(request)}:{token_prefix}"


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """Tokens are looked up by prefix and proven by a constant-time comparison of the secret's hash.

    Expired, revoked, unknown tokens and those of deactivated users are refused with 401. After
    ``TOKEN_FAILURES_PER_WINDOW`` failures from one address with one token's prefix (or with prefixes of no
    token at all) inside ``TOKEN_FAILURE_WINDOW_SECONDS``, attempts from that address with that prefix (or
    with unknown prefixes) are answered 429 until the window passes; other tokens from the address still work.
    """

    keyword = "bearer"

    def authenticate(self, request):
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.encode():
            return None
        limit, window = settings.CELLHUB["TOKEN_FAILURES_PER_WINDOW"], settings.CELLHUB["TOKEN_FAILURE_WINDOW_SECONDS"]
        token = None
        if len(parts) == 2:
            try:
                scheme, prefix, secret = parts[1].decode().split("_", 2)
            except (UnicodeDecodeError, ValueError):
                scheme = prefix = secret = ""
            if scheme == TOKEN_SCHEME and prefix and "\x00" not in prefix:
                token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
        key = _failure_key(request, token.prefix if token is not None else UNKNOWN_TOKEN)
        if cache.get(key, 0) >= limit:
            raise exceptions.Throttled(wait=window, detail="Too many failed attempts with this token from here.")
        if (
            token is None
            or not hmac.compare_digest(token.secret_hash, hash_token_secret(secret))
            or not token.is_usable
            or not token.user.is_active
        ):
            self._fail(key, window)
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def _fail(self, key, window):
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
