"""The audit log's one writer: ``audit_record`` — who did (or tried) what, to what, how it ended, and why.

Called from the thin layers that know who acts and through which door (admin actions, the customer site's views,
the API's views) and from the step runner for an operation's start and end. Refusals are recorded too
(``outcome="refused"``), with the refusal's text as the reason. A failure to write an audit row is logged and
never turns a finished action into an error for the person who did it.

Action names are ``<target>.<verb>`` (``instance.stop``, ``operation.cancel``, ``credentials.reveal``); the admin
filters by them. Nothing secret is ever passed in ``details``.
"""
from __future__ import annotations

import ipaddress
import logging

from django.db import models, transaction

from portal.models import ActorKind, ApiToken, AuditEvent, AuditOutcome

logger = logging.getLogger(__name__)

SUCCEEDED, REFUSED, FAILED = AuditOutcome.SUCCEEDED, AuditOutcome.REFUSED, AuditOutcome.FAILED
# Request fields never copied into an audit row's details.
SECRET_FIELDS = frozenset({"password", "password1", "password2", "token", "secret", "csrfmiddlewaretoken"})


def actor_kind_of(user, request=None) -> str:
    """staff / customer by the user's role; ``api_token`` for a request authenticated with a token; scheduler
    when nobody signed in acted (the hub's own work)."""
    if request is not None and isinstance(getattr(request, "auth", None), ApiToken):
        return ActorKind.API_TOKEN
    if user is None or not getattr(user, "is_authenticated", False):
        return ActorKind.SCHEDULER
    return ActorKind.STAFF if user.is_staff else ActorKind.CUSTOMER


def _label_of(user) -> str:
    if user is None:
        return ""
    return user.get_username() + (f" <{user.email}>" if getattr(user, "email", "") else "")


def _address(value) -> str | None:
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


def request_fields(data) -> dict:
    """The non-secret fields a person sent (a form's or an API body's), for ``details``."""
    if not hasattr(data, "keys"):
        return {}
    fields = {}
    for key in data.keys():
        if key.lower() in SECRET_FIELDS or key in {"action", "_selected_action", "apply", "index", "select_across"}:
            continue
        value = data.getlist(key) if hasattr(data, "getlist") else data.get(key)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        fields[key] = value if isinstance(value, str | int | float | bool | type(None) | list | dict) else str(value)
    return fields


def audit_record(
    *,
    action: str,
    outcome: str = SUCCEEDED,
    target: models.Model | None = None,
    target_type: str = "",
    target_id: str | int = "",
    target_label: str = "",
    reason: str = "",
    details: dict | None = None,
    request=None,
    actor=None,
    actor_kind: str | None = None,
) -> AuditEvent | None:
    """Write one audit row; returns it (None if it could not be written, which is logged, never raised).

    ``request`` supplies the actor (its signed-in user), the actor kind (a token → ``api_token``) and the client
    address; ``actor``/``actor_kind`` say it without a request (the scheduler: both None). ``target`` supplies the
    target's type, id and label unless they are given. The row is part of the caller's transaction (an action
    rolled back leaves no "succeeded" row), written in a savepoint so a failed write never breaks it.
    """
    if request is not None and actor is None:
        user = getattr(request, "user", None)
        actor = user if user is not None and user.is_authenticated else None
    kind = actor_kind or actor_kind_of(actor, request)
    if target is not None:
        target_type = target_type or target._meta.model_name
        target_id = target_id or target.pk
        target_label = target_label or str(target)
    address = _address(request.META.get("REMOTE_ADDR")) if request is not None else None
    try:
        with transaction.atomic():  # a savepoint: a failed write never poisons the caller's transaction
            return AuditEvent.objects.create(
                actor=actor,
                actor_label=_label_of(actor),
                actor_kind=kind,
                action=action,
                target_type=target_type,
                target_id=str(target_id or ""),
                target_label=str(target_label)[:255],
                outcome=str(outcome),
                reason=str(reason or ""),
                details=details or {},
                address=address or None,
            )
    except Exception:
        logger.exception("audit row not written: %s %s %s %s", kind, action, target_type, target_id)
        return None
