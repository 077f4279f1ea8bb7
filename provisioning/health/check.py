"""One instance's health check: what a probe found, what the hub does about it, and what is recorded.

``decide`` turns the instance's current health and a probe into an ``Outcome`` without touching anything;
``outcome_act`` does what needs doing outside the database (a restart through the driver, the staff mail, their
audit rows); ``instance_health_check`` is the whole check of one instance, ``health_check_pass`` (``sweep``) the
batched one of the fleet. The rules are in the package's docstring (``provisioning/health/__init__.py``).
"""
from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from cells.audit import FAILED, SUCCEEDED, audit_record
from cells.models import Instance, Share
from provisioning import drivers
from provisioning.backups.selectors import database_kwargs
from provisioning.drivers.base import DriverError
from provisioning.health.history import is_change
from provisioning.models import HealthAction, HealthCheck, HealthStatus, InstanceHealth
from provisioning.operations import call_with_timeout
from provisioning.plans.provision import deployment_spec
from provisioning.probe import Probe, instance_probe

logger = logging.getLogger(__name__)

# A check that started longer ago than this and never finished (its process died) no longer blocks the next.
CHECK_CLAIM_SECONDS = 600

def instance_restart(instance: Instance) -> None:
    """Scale the deployment to zero (when it exists), then deploy it again from the instance's spec: one replica,
    its version's image, its current database. Raises ``DriverError`` (a call that times out is one)."""
    share = Share.objects.get(instance=instance)
    credentials = drivers.for_pool(instance.database_pool).credentials(instance, **database_kwargs(instance))
    spec = dataclasses.replace(deployment_spec(instance, database_url=credentials.url, share=share), replicas=1)
    compute = drivers.for_pool(instance.compute_pool)

    def restart(_abandoned):
        if compute.status(instance=instance).exists:
            compute.scale(instance=instance, replicas=0)
        compute.deploy(spec=spec)

    call_with_timeout(restart, seconds=2 * settings.CELLHUB["HEALTH_DRIVER_TIMEOUT"], name=f"restart of {instance}")


def restart_backoff(attempts_made: int) -> timedelta:
    """How long after a restart the next may be made, when ``attempts_made`` restarts were made so far."""
    return timedelta(seconds=settings.CELLHUB["HEALTH_RESTART_BACKOFF_SECONDS"] * 2 ** max(attempts_made - 1, 0))


def _tell_staff(instance: Instance, reason: str) -> None:
    staff = list(
        get_user_model().objects.filter(is_staff=True, is_active=True).exclude(email="").values_list("email", flat=True)
    )
    if not staff:
        return
    try:
        send_mail(
            subject=f"[Cell Hub] {instance.name} is unhealthy and was flagged",
            message=(
                f"Instance {instance.name} ({instance.hostname or 'no hostname'}, reef {instance.reef}) is unhealthy:"
                f"\n\n{reason}\n\nThe hub stopped restarting it. Look at its health in the admin; clearing the flag "
                "there gives it its automatic restarts back."
            ),
            from_email=None,
            recipient_list=staff,
        )
    except Exception:
        logger.exception("health flag mail for %s not sent", instance.name)


@dataclasses.dataclass
class Outcome:
    """What a check found and does: its status, action and detail, the ``InstanceHealth`` fields to write, and the
    work left to ``outcome_act`` (``effect``: ``restart`` or ``flag``; empty when there is none)."""

    status: str
    action: str
    detail: str
    changes: dict
    effect: str = ""
    attempt: int = 0

    def health_changes(self) -> dict:
        """The ``InstanceHealth`` fields to write once the effect is done."""
        return {**self.changes, "action": self.action, "detail": self.detail}


def decide(health, probe: Probe, now: datetime) -> Outcome:
    """The outcome of a check that found ``probe`` for an instance whose current health is ``health`` (an
    ``InstanceHealth``, or anything with its fields). Pure: reads settings, touches nothing."""
    action, detail = HealthAction.NONE, probe.detail
    changes: dict = {"status": probe.status, "checked_at": now, "detail": probe.detail, "checking_since": None}
    if probe.status != health.status:
        changes["since"] = now
    effect, attempt = "", 0
    if probe.status == HealthStatus.HEALTHY:
        if health.status == HealthStatus.UNHEALTHY or health.flagged_at or health.restart_attempts:
            action = HealthAction.RECOVERED
            detail += f" (recovered after {health.restart_attempts} restart(s))"
        changes.update(unhealthy_since=None, restart_attempts=0, last_restart_at=None, flagged_at=None, flag_reason="")
    elif probe.status == HealthStatus.UNHEALTHY:
        unhealthy_since = health.unhealthy_since or now
        changes["unhealthy_since"] = unhealthy_since
        limit = settings.CELLHUB["HEALTH_RESTART_ATTEMPTS"]
        if health.flagged_at:
            detail += "; flagged for staff, no further restart until the flag is cleared"
        elif health.last_restart_at and now < health.last_restart_at + restart_backoff(health.restart_attempts):
            action = HealthAction.WAITING
            next_at = health.last_restart_at + restart_backoff(health.restart_attempts)
            what = (f"next restart (#{health.restart_attempts + 1} of {limit})" if health.restart_attempts < limit
                    else "giving the last restart time")
            detail += f"; {what}: not before {next_at:%H:%M:%S} UTC"
        elif health.restart_attempts >= limit:
            action, effect = HealthAction.FLAGGED, "flag"
            detail = (f"unhealthy since {unhealthy_since:%Y-%m-%d %H:%M:%S} UTC: {probe.detail}; "
                      f"{health.restart_attempts} restart(s) did not help")
            changes.update(flagged_at=now, flag_reason=detail)
        else:
            action, effect, attempt = HealthAction.RESTARTED, "restart", health.restart_attempts + 1
            changes.update(restart_attempts=attempt, last_restart_at=now)
    return Outcome(probe.status, action, detail, changes, effect, attempt)


def outcome_act(instance: Instance, outcome: Outcome, probe: Probe) -> None:
    """Do the outcome's ``effect``: restart the instance (its action becomes ``restart_failed`` when that fails) or
    flag it (audited, staff mailed). Audits in the caller's transaction, if any. Never raises for a driver's
    error."""
    limit = settings.CELLHUB["HEALTH_RESTART_ATTEMPTS"]
    if outcome.effect == "flag":
        audit_record(action="instance.flag", target=instance, reason=outcome.detail, details=probe.details)
        _tell_staff(instance, outcome.detail)
    elif outcome.effect == "restart":
        try:
            instance_restart(instance)
        except Exception as error:  # a driver error, or a record the restart cannot work from
            if not isinstance(error, DriverError):
                logger.exception("restart of %s failed", instance.name)
            outcome.action = HealthAction.RESTART_FAILED
            outcome.detail += f"; restart {outcome.attempt} of {limit} failed: {error}"
            audit_record(action="instance.restart", outcome=FAILED, target=instance, reason=outcome.detail)
        else:
            outcome.detail += f"; restarted ({outcome.attempt} of {limit})"
            audit_record(action="instance.restart", outcome=SUCCEEDED, target=instance, reason=probe.detail,
                         details={"attempt": outcome.attempt, "limit": limit})


def outcome_row(instance_id: int, outcome: Outcome, probe: Probe, now: datetime) -> HealthCheck:
    """The history row of the outcome (unsaved)."""
    return HealthCheck(instance_id=instance_id, checked_at=now, status=outcome.status, action=outcome.action,
                       detail=outcome.detail, details=probe.details)


def outcome_log(name: str, outcome: Outcome) -> None:
    log = logger.info if outcome.status == HealthStatus.HEALTHY else logger.warning
    log("health of %s: %s (%s)", name, outcome.status, outcome.detail, extra={"instance": name})


def _claim(instance: Instance, now: datetime) -> InstanceHealth | None:
    try:
        with transaction.atomic():
            InstanceHealth.objects.get_or_create(instance=instance)
    except IntegrityError:
        pass  # a concurrent check made it
    stale = now - timedelta(seconds=CHECK_CLAIM_SECONDS)
    claimed = InstanceHealth.objects.filter(
        Q(checking_since__isnull=True) | Q(checking_since__lt=stale), instance=instance
    ).update(checking_since=now)
    return InstanceHealth.objects.get(instance=instance) if claimed else None


def instance_health_check(*, instance: Instance, now: datetime | None = None, probe: Probe | None = None):
    """Check one instance, act on what is found (restart, wait, flag, or clear), and record it.

    Returns the check as a ``HealthCheck`` — saved in the history only when it is a change of health (see
    ``history``), else unsaved (``pk`` None) — or None when another check of this instance is under way. ``probe``
    is a result obtained already.
    """
    now = now or timezone.now()
    health = _claim(instance, now)
    if health is None:
        return None
    try:
        probe = probe or instance_probe(instance)
        outcome = decide(health, probe, now)
        outcome_act(instance, outcome, probe)
        row = outcome_row(instance.pk, outcome, probe, now)
        with transaction.atomic():
            InstanceHealth.objects.filter(instance=instance).update(**outcome.health_changes())
            if is_change(before_status=health.status, before_action=health.action, status=outcome.status,
                         action=outcome.action):
                row.save()
        outcome_log(instance.name, outcome)
        return row
    finally:
        InstanceHealth.objects.filter(instance=instance, checking_since=now).update(checking_since=None)


def instance_health_flag_clear(*, instance: Instance) -> bool:
    """Staff clear the flag: the instance gets its automatic restarts back. False when it was not flagged."""
    return bool(
        InstanceHealth.objects.filter(instance=instance, flagged_at__isnull=False).update(
            flagged_at=None, flag_reason="", restart_attempts=0, last_restart_at=None
        )
    )


