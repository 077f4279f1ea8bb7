"""The health history: a row per change of an instance's health, not per check; what customers and staff read of it.

A check is a change — and leaves a ``HealthCheck`` row — when it finds another status than the instance's current
one, or when it did something (restarted, a restart failed, flagged, saw it recover), or when it begins or ends a
wait between restarts (its action differs from the last check's). A check that finds what the one before found
only updates ``InstanceHealth`` (``checked_at``, ``detail``). Rows older than ``HEALTH_HISTORY_DAYS`` are pruned;
``InstanceHealth.since`` keeps when the current status began even once its row is gone.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from cells.models import Instance
from provisioning.models import HealthAction, HealthCheck, HealthStatus, InstanceHealth

# What a customer reads about a check: no internal detail, only what it means for them.
CUSTOMER_TEXT = {
    (HealthStatus.HEALTHY, HealthAction.NONE): "Healthy",
    (HealthStatus.HEALTHY, HealthAction.RECOVERED): "Healthy again",
    (HealthStatus.UNHEALTHY, HealthAction.RESTARTED): "Not responding: restarted automatically",
    (HealthStatus.UNHEALTHY, HealthAction.WAITING): "Not responding: another restart is scheduled",
    (HealthStatus.UNHEALTHY, HealthAction.RESTART_FAILED): "Not responding: the restart failed and will be retried",
    (HealthStatus.UNHEALTHY, HealthAction.FLAGGED): "Not responding: our support staff have been alerted",
    (HealthStatus.UNHEALTHY, HealthAction.NONE): "Not responding: our support staff are looking into it",
    (HealthStatus.UNKNOWN, HealthAction.NONE): "Could not be checked this time",
}

# Actions that are events of their own: recorded even when the check before did the same.
EVENT_ACTIONS = frozenset({
    HealthAction.RESTARTED, HealthAction.RESTART_FAILED, HealthAction.FLAGGED, HealthAction.RECOVERED,
})


def customer_text(status: str, action: str) -> str:
    return CUSTOMER_TEXT.get((status, action)) or HealthStatus(status).label


def is_change(*, before_status: str, before_action: str, status: str, action: str) -> bool:
    """Whether a check that found ``status`` and did ``action`` is a change of health after one that found
    ``before_status`` and did ``before_action`` (see the module's docstring)."""
    return status != before_status or action != before_action or action in EVENT_ACTIONS


def history_prune(*, now: datetime) -> int:
    """Delete the rows older than ``HEALTH_HISTORY_DAYS``; returns how many went."""
    keep = timedelta(days=settings.CELLHUB["HEALTH_HISTORY_DAYS"])
    return HealthCheck.objects.filter(checked_at__lt=now - keep).delete()[0]


def instance_health_overview(instance: Instance, *, limit: int = 10) -> dict:
    """What the instance pages show: the current health (``health``, with ``customer_text``; None before the first
    check) and the latest changes of its health, newest first, each with the customer's text."""
    current = InstanceHealth.objects.filter(instance=instance).first()
    if current is not None:
        current.customer_text = customer_text(current.status, current.action)
    checks = list(HealthCheck.objects.filter(instance=instance).order_by("-checked_at", "-id")[:limit])
    for check in checks:
        check.customer_text = customer_text(check.status, check.action)
    return {"health": current, "health_checks": checks}
