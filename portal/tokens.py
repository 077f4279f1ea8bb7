"""API tokens of an account: issued (shown once) and revoked — the one place both the API and the site call."""
from __future__ import annotations

from django.utils import timezone

from portal.models import ApiToken


def api_token_issue(*, user, name: str, expires_at=None) -> tuple[ApiToken, str]:
    """A new token for ``user``; returns the row and the plaintext token, which is never stored or shown again."""
    return ApiToken.issue(user=user, name=name, expires_at=expires_at)


def api_token_revoke(*, token: ApiToken) -> bool:
    """Revoke ``token`` (a conditional update: True if this call revoked it, False if it already was)."""
    return bool(ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()))
