"""How people sign in, for every door (site, admin, the API's password grant).

- ``normalise_login`` is the one rule for a typed log-in name: surrounding spaces dropped, case folded (signup stores
  e-mails lower-cased, so an address typed with capitals at signup or at login is the same account);
- ``EmailOrUsernameBackend`` finds the account by username or e-mail without regard to case;
- django-axes counts failures per (log-in name, client address); ``login_name_of`` gives it the normalised name so
  ``Ann@Example.com`` and ``ann@example.com`` share one counter, and ``lockout_response`` answers a lockout in the
  door's own shape: the API's error body under ``/api/``, the site's page elsewhere.
"""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.db.models import Q
from django.http import JsonResponse
from django.shortcuts import render

LOCKED_OUT_MESSAGE = "Too many failed log-ins for this account from your address; try again in {minutes} minutes."


def normalise_login(value: str | None) -> str:
    """The canonical form of a typed username or e-mail: stripped and lower-cased."""
    return (value or "").strip().lower()


class EmailOrUsernameBackend(ModelBackend):
    """Django's model backend, matching the username or the e-mail without regard to case.

    An exact username match wins; otherwise exactly one account must match (two accounts differing only in case
    match neither, rather than the wrong one). Inactive accounts are refused as by ``ModelBackend``.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        login = normalise_login(username if username is not None else kwargs.get(get_user_model().USERNAME_FIELD))
        if not login or password is None:
            return None
        users = get_user_model()._default_manager
        user = users.filter(username=login).first()
        if user is None:
            candidates = list(users.filter(Q(username__iexact=login) | Q(email__iexact=login))[:2])
            user = candidates[0] if len(candidates) == 1 else None
        if user is None:
            users.model().set_password(password)  # the same hashing time as a real check (no user enumeration)
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None


def login_name_of(request, credentials: dict | None) -> str:
    """axes' key for the account: the normalised name from the credentials, else from the posted form."""
    name = (credentials or {}).get("username")
    if name is None and request is not None:
        name = request.POST.get("username") or request.POST.get("email")
    return normalise_login(name)


def lockout_minutes() -> int:
    return int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)


def lockout_response(request, original_response=None, credentials=None):
    """A lockout, said in the API's error shape (429) under /api/ and on the site's page elsewhere (429)."""
    message = LOCKED_OUT_MESSAGE.format(minutes=lockout_minutes())
    if request.path.startswith("/api/"):
        body = {"error": {"code": "locked_out", "message": message, "fields": {}}}
        return JsonResponse(body, status=429, headers={"Retry-After": str(lockout_minutes() * 60)})
    return render(request, "site/locked_out.html", {"message": message}, status=429)
