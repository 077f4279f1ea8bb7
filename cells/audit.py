"""The audit log's one writer: ``audit_record`` — who did (or tried) what, to what, how it ended, and why.

Called from the thin layers that know who acts and through which door (admin actions, the customer site's views,
the API's views) and from the step runner for an operation's start and end. Refusals are recorded too
(``outcome="refused"``), with the refusal's text as the reason. The row is written in the caller's transaction:
if it cannot be written, the error propagates and the action's transaction rolls back with it — an action is
never done without its trace. Text the database cannot store (the NUL character) is replaced, not refused.

Action names are ``<target>.<verb>`` (``instance.stop``, ``operation.cancel``, ``credentials.reveal``); the admin
filters by them. Nothing secret is ever passed in ``details``.
"""
from __future__ import annotations

import ipaddress

from django.db import models

from cells.choices import ActorKind, AuditOutcome
from cells.models import AuditEvent

SUCCEEDED, REFUSED, FAILED = AuditOutcome.SUCCEEDED, AuditOutcome.REFUSED, AuditOutcome.FAILED
# Request fields never copied into an audit row's details.
SECRET_FIELDS = frozenset({"password", "password1", "password2", "token", "secret", "csrfmiddlewaretoken"})


def actor_kind_of(user, request=None) -> str:
    """staff / customer by the user's role; ``api_token`` for a request authenticated with a credential of its own
    (DRF's ``request.auth``: the token; a browser session leaves it None); scheduler when nobody signed in acted
    (the hub's own work)."""
    if request is not None and getattr(request, "auth", None) is not None:
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


NUL = "\x00"


def storable(value):
    """``value`` with every NUL character replaced (PostgreSQL text and JSON cannot hold one), keys included."""
    if isinstance(value, str):
        return value.replace(NUL, "\N{REPLACEMENT CHARACTER}")
    if isinstance(value, dict):
        return {storable(str(key)): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value


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


def _event(
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
) -> AuditEvent:
    """The unsaved row ``audit_record`` writes (see there); an unknown keyword is a ``TypeError``."""
    if request is not None and actor is None:
        user = getattr(request, "user", None)
        actor = user if user is not None and user.is_authenticated else None
    kind = actor_kind or actor_kind_of(actor, request)
    if target is not None:
        target_type = target_type or target._meta.model_name
        target_id = target_id or target.pk
        target_label = target_label or str(target)
    address = _address(request.META.get("REMOTE_ADDR")) if request is not None else None
    return AuditEvent(
        actor=actor,
        actor_label=storable(_label_of(actor)),
        actor_kind=kind,
        action=action,
        target_type=target_type,
        target_id=storable(str(target_id or "")),
        target_label=storable(str(target_label))[:255],
        outcome=str(outcome),
        reason=storable(str(reason or "")),
        details=storable(details or {}),
        address=address or None,
    )


def audit_record(**fields) -> AuditEvent:
    """Write one audit row in the caller's transaction and return it; a failure to write it raises.

    ``fields`` are ``_event``'s keywords: ``action`` (required), ``outcome``, ``target`` (or ``target_type``,
    ``target_id``, ``target_label``), ``reason``, ``details``, ``request``, ``actor``, ``actor_kind``.
    ``request`` supplies the actor (its signed-in user), the actor kind (a token → ``api_token``) and the client
    address; ``actor``/``actor_kind`` say it without a request (the scheduler: both None). ``target`` supplies the
    target's type, id and label unless they are given. The row is part of the caller's transaction: an action
    rolled back leaves no "succeeded" row, and a row that cannot be written rolls the action back.
    """
    event = _event(**fields)
    event.save(force_insert=True)
    return event


def audit_record_many(records: list[dict]) -> list[AuditEvent]:
    """Write one audit row per entry of ``records`` (each the keyword arguments of ``audit_record``) in one
    ``INSERT``, in the caller's transaction, with the same promises as ``audit_record``: for work done in bulk."""
    return AuditEvent.objects.bulk_create([_event(**record) for record in records])
