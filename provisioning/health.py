"""Health checks: each running instance is asked whether it is up; one that is not is restarted, then flagged.

A check asks the instance's compute driver for its deployment (it exists, has at least one ready replica, and runs
the image of the instance's version), then asks the instance itself: an instance of a local compute pool always
(``GET http://127.0.0.1:<its port>/api/health`` with its own name in the ``Host`` header), others when
``HEALTH_HTTP`` is on (``HEALTH_URL``, or the compute pool's ``config["health_url"]``; ``{hostname}`` is the
instance's). Healthy means a 2xx answer whose ``version``, when it gives one, is the version the hub expects.

An unhealthy instance is restarted through its driver — scaled to zero (every pod stopped), then deployed again
from its spec (one replica, its version's image, its current database) — at most ``HEALTH_RESTART_ATTEMPTS``
times, the n-th no sooner than ``HEALTH_RESTART_BACKOFF_SECONDS × 2^(n-1)`` after the one before; a check between
two restarts records that it waits. When the restarts are spent and it is still unhealthy once the last one has
had the same time to help, the instance is flagged:
staff get an e-mail, the admin lists it, and no further restart is made until staff clear the flag (which gives it
its restarts back). A healthy check clears everything (the history keeps what happened).

A check that cannot ask (the cluster does not answer) is recorded as ``unknown`` and changes nothing; after one
such answer the pass stops asking that pool for the rest of the pass. Instances with an operation queued or
running are skipped (the operation is changing the deployment). Every check is kept for ``HEALTH_HISTORY_DAYS``.
Restarts and flags are audited (actor: the scheduler).
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
from cells.choices import OPERATION_ACTIVE_STATES, InstanceState
from cells.models import Instance, Operation, Pool, Share
from provisioning import drivers
from provisioning.backups.selectors import database_kwargs
from provisioning.drivers.base import DriverError
from provisioning.firewall import share_firewall_follow
from provisioning.models import HealthAction, HealthCheck, HealthStatus, InstanceHealth
from provisioning.operations import call_with_timeout
from provisioning.plans.provision import deployment_spec
from provisioning.probe import Probe, health_request, health_url, instance_probe  # noqa: F401  (health's public face)

logger = logging.getLogger(__name__)

# A check that started longer ago than this and never finished (its process died) no longer blocks the next.
CHECK_CLAIM_SECONDS = 600

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

    Returns the ``HealthCheck`` row, or None when another check of this instance is under way. ``probe`` is a
    result obtained already (the pass passes ``unknown`` for a pool that stopped answering).
    """
    now = now or timezone.now()
    health = _claim(instance, now)
    if health is None:
        return None
    try:
        return _check(instance, health, probe or instance_probe(instance), now)
    finally:
        InstanceHealth.objects.filter(instance=instance).update(checking_since=None)


def _check(instance: Instance, health: InstanceHealth, probe: Probe, now: datetime) -> HealthCheck:
    action, detail = HealthAction.NONE, probe.detail
    changes: dict = {"status": probe.status, "checked_at": now, "detail": probe.detail}
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
            action = HealthAction.FLAGGED
            reason = (f"unhealthy since {unhealthy_since:%Y-%m-%d %H:%M:%S} UTC: {probe.detail}; "
                      f"{health.restart_attempts} restart(s) did not help")
            changes.update(flagged_at=now, flag_reason=reason)
            detail = reason
            audit_record(action="instance.flag", target=instance, reason=reason, details=probe.details)
            _tell_staff(instance, reason)
        else:
            attempt = health.restart_attempts + 1
            changes.update(restart_attempts=attempt, last_restart_at=now)
            try:
                instance_restart(instance)
            except Exception as error:  # a driver error, or a record the restart cannot work from
                if not isinstance(error, DriverError):
                    logger.exception("restart of %s failed", instance.name)
                action = HealthAction.RESTART_FAILED
                detail += f"; restart {attempt} of {limit} failed: {error}"
                audit_record(action="instance.restart", outcome=FAILED, target=instance, reason=detail)
            else:
                action = HealthAction.RESTARTED
                detail += f"; restarted ({attempt} of {limit})"
                audit_record(action="instance.restart", outcome=SUCCEEDED, target=instance, reason=probe.detail,
                             details={"attempt": attempt, "limit": limit})
    InstanceHealth.objects.filter(instance=instance).update(**changes)
    log = logger.info if probe.status == HealthStatus.HEALTHY else logger.warning
    log("health of %s: %s (%s)", instance.name, probe.status, detail, extra={"instance": instance.name})
    return HealthCheck.objects.create(
        instance=instance, checked_at=now, status=probe.status, action=action, detail=detail, details=probe.details
    )


def instances_to_check():
    """Running instances with a deployment and no operation under way."""
    busy = Operation.objects.filter(
        state__in=[str(s) for s in OPERATION_ACTIVE_STATES], instance__isnull=False
    ).values("instance_id")
    return (
        Instance.objects.filter(state=InstanceState.RUNNING, compute_pool__isnull=False)
        .exclude(pk__in=busy)
        .select_related("compute_pool", "database_pool", "region", "reef")
        .order_by("pk")
    )


def _follow_firewall(instance: Instance, counts: dict) -> None:
    """The share's firewall follows an instance that came back at another address (rescheduled, restarted)."""
    try:
        if share_firewall_follow(instance=instance):
            counts["firewall_updated"] = counts.get("firewall_updated", 0) + 1
    except DriverError as error:
        logger.warning("firewall of %s not followed: %s", instance.name, error)


def health_check_pass(*, now: datetime | None = None) -> dict:
    """The scheduled pass: check every running instance, then forget checks older than ``HEALTH_HISTORY_DAYS``.

    Returns counts by status and by action taken.
    """
    now = now or timezone.now()
    counts: dict[str, int] = {}
    unreachable: dict[int, str] = {}
    for instance in instances_to_check():
        probe = None
        if instance.compute_pool_id in unreachable:
            probe = Probe(HealthStatus.UNKNOWN, unreachable[instance.compute_pool_id], {})
        try:
            check = instance_health_check(instance=instance, now=now, probe=probe)
        except Exception:  # one instance's trouble never stops the pass
            logger.exception("health check of %s failed", instance.name)
            counts["errors"] = counts.get("errors", 0) + 1
            continue
        if check is None:
            continue
        if check.status == HealthStatus.UNKNOWN:
            unreachable.setdefault(instance.compute_pool_id, check.detail)
        else:
            _follow_firewall(instance, counts)
        counts[check.status] = counts.get(check.status, 0) + 1
        if check.action != HealthAction.NONE:
            counts[check.action] = counts.get(check.action, 0) + 1
    keep = timedelta(days=settings.CELLHUB["HEALTH_HISTORY_DAYS"])
    counts["pruned"] = HealthCheck.objects.filter(checked_at__lt=now - keep).delete()[0]
    return counts


def instance_health_flag_clear(*, instance: Instance) -> bool:
    """Staff clear the flag: the instance gets its automatic restarts back. False when it was not flagged."""
    return bool(
        InstanceHealth.objects.filter(instance=instance, flagged_at__isnull=False).update(
            flagged_at=None, flag_reason="", restart_attempts=0, last_restart_at=None
        )
    )


def instance_health_overview(instance: Instance, *, limit: int = 10) -> dict:
    """What the instance pages show: the current health and the latest checks, each with the customer's text."""
    current = InstanceHealth.objects.filter(instance=instance).first()
    checks = list(HealthCheck.objects.filter(instance=instance).order_by("-checked_at", "-id")[:limit])
    for check in checks:
        check.customer_text = CUSTOMER_TEXT.get((check.status, check.action)) or check.get_status_display()
    return {"health": current, "health_checks": checks}


def pool_alarm_states(*, pool: Pool) -> dict[str, str] | str:
    """The pool's cloud metric alarms (CloudWatch, Azure Monitor) and their states, as the provider reports them;
    an empty dict when its provider has none; a sentence when the provider cannot be read (never raises)."""
    try:
        return drivers.for_pool(pool).alarm_states()
    except DriverError as error:
        return f"alarm states unavailable: {error}"
