"""Gradual rollouts: a release reaches the fleet ring by ring (canary first), in batches, inside each
instance's weekly maintenance window, halting by itself when a wave fails too often.

- ``rollout_create`` plans the waves (one per rollout ring, in ring order) and their targets: every
  running or stopped instance not on the release's version and not pinned.
- ``rollouts_tick(now=)`` drives every running rollout one step; it is safe on many workers at once:
  each rollout row is taken with ``FOR UPDATE SKIP LOCKED`` (a second worker skips it) and each target
  moves ``pending → upgrading`` with a conditional update, so no instance is upgraded twice.
- ``rollout_start/pause/resume/cancel`` are staff's controls; illegal ones raise ``IllegalTransition``.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Case, CharField, Count, F, IntegerField, OuterRef, Subquery, Value, When
from django.db.models.functions import Coalesce, Mod
from django.utils import timezone

from cells.choices import (
    OPERATION_RETRYABLE_STATES,
    InstanceState,
    OperationKind,
    OperationState,
    ReleaseState,
    RolloutState,
    TargetState,
    WaveState,
)
from cells.errors import IllegalTransition
from cells.models import Instance, Operation, Release, Rollout, RolloutTarget, RolloutWave
from cells.states import RELEASE, ROLLOUT
from provisioning.operations import operation_create, operation_refuse_conflicts, operations_create_for_instances

logger = logging.getLogger(__name__)
MINUTES_PER_WEEK = 7 * 24 * 60
UPGRADABLE_STATES = [InstanceState.RUNNING, InstanceState.STOPPED]


# ---- maintenance windows ------------------------------------------------------------------------------


def minute_of_week(moment: datetime) -> int:
    """Minutes since Monday 00:00 UTC."""
    moment = moment.astimezone(UTC)
    return moment.weekday() * 1440 + moment.hour * 60 + moment.minute


def window_start_expression():
    """Minute of the week an instance's window opens: its own choice, else its region's default."""
    weekday = Coalesce(F("instance__maintenance_weekday"), F("instance__region__maintenance_weekday"))
    hour = Coalesce(F("instance__maintenance_hour"), F("instance__region__maintenance_hour"))
    return weekday * Value(1440) + hour * Value(60)


def annotate_window(queryset, now: datetime):
    """``window_offset``: minutes since the target instance's window last opened (open while < its length)."""
    elapsed = Value(minute_of_week(now)) - window_start_expression() + Value(MINUTES_PER_WEEK)
    return queryset.annotate(window_offset=Mod(elapsed, Value(MINUTES_PER_WEEK), output_field=IntegerField()))


def next_window(instance: Instance, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The instance's current (if open) or next maintenance window as (start, end), in UTC."""
    now = (now or timezone.now()).astimezone(UTC)
    weekday, hour = instance.window()
    start_of_week = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    start = start_of_week + timedelta(days=weekday, hours=hour)
    length = timedelta(minutes=Instance.MAINTENANCE_WINDOW_MINUTES)
    if start + length <= now:
        start += timedelta(days=7)
    elif start > now + timedelta(days=7):
        start -= timedelta(days=7)
    return start, start + length


# ---- planning -----------------------------------------------------------------------------------------


def rollout_targets_queryset(release: Release):
    """Instances a rollout of ``release`` would upgrade: placed, running or stopped, not pinned, not on it."""
    return Instance.objects.filter(
        state__in=UPGRADABLE_STATES, reef__isnull=False, version_pinned=False
    ).exclude(server_version=release.version)


@transaction.atomic
def rollout_create(
    *, release: Release, requested_by=None, batch_size: int = 10, bake_minutes: int = 60, max_failures: int = 2,
    max_failure_ratio: float = 0.05,
) -> Rollout:
    """Plan a rollout: one wave per rollout ring (ascending, ring 0 = canary), every eligible instance a target.

    Raises ``IllegalTransition`` for a draft or withdrawn release. Costs four statements at any fleet size (the
    rollout, its waves and its targets each one ``INSERT``, the waves' totals one ``UPDATE``): the candidates are
    never brought into Python.
    """
    if release.state not in (ReleaseState.AVAILABLE, ReleaseState.DEFAULT):
        raise IllegalTransition(release, release.state, "rolled out")
    rollout = Rollout.objects.create(
        release=release, created_by=requested_by, batch_size=batch_size, bake_minutes=bake_minutes,
        max_failures=max_failures, max_failure_ratio=max_failure_ratio,
    )
    candidates, params = (
        rollout_targets_queryset(release).order_by()
        .values(candidate=F("pk"), version=F("server_version"), ring=F("reef__rollout_ring"))
        .query.sql_with_params()
    )
    wave, target = RolloutWave._meta.db_table, RolloutTarget._meta.db_table
    with connection.cursor() as cursor:
        # One wave per ring that has a candidate, numbered in ring order.
        cursor.execute(
            f"INSERT INTO {wave} (rollout_id, position, ring, state, total, upgrading, succeeded, failed, skipped) "
            f"SELECT %s, ROW_NUMBER() OVER (ORDER BY c.ring) - 1, c.ring, %s, 0, 0, 0, 0, 0 "
            f"FROM ({candidates}) c GROUP BY c.ring",
            [rollout.pk, WaveState.PENDING, *params],
        )
        cursor.execute(
            f"INSERT INTO {target} (rollout_id, wave_id, instance_id, state, from_version, note) "
            f"SELECT %s, w.id, c.candidate, %s, c.version, '' FROM ({candidates}) c "
            f"JOIN {wave} w ON w.rollout_id = %s AND w.ring = c.ring",
            [rollout.pk, TargetState.PENDING, *params, rollout.pk],
        )
    # Totals from the targets themselves, so they agree with what was inserted whatever changed in between.
    per_wave = RolloutTarget.objects.filter(wave=OuterRef("pk")).values("wave").annotate(n=Count("pk")).values("n")
    RolloutWave.objects.filter(rollout=rollout).update(total=Coalesce(Subquery(per_wave), 0))
    return rollout


# ---- controls -----------------------------------------------------------------------------------------


def rollout_start(*, rollout: Rollout, requested_by=None) -> Rollout:
    ROLLOUT.change(rollout, RolloutState.RUNNING, only_from={RolloutState.PLANNED}, started_at=timezone.now())
    return rollout


def rollout_pause(*, rollout: Rollout, requested_by=None) -> Rollout:
    """Start no new upgrades; the ones under way finish."""
    ROLLOUT.change(rollout, RolloutState.PAUSED)
    return rollout


def rollout_resume(*, rollout: Rollout, requested_by=None) -> Rollout:
    """Go on from a pause, or from a halt once staff have looked at why."""
    ROLLOUT.change(rollout, RolloutState.RUNNING, halt_reason="")
    return rollout


@transaction.atomic
def rollout_cancel(*, rollout: Rollout, requested_by=None) -> Rollout:
    """Stop for good: targets not yet started are skipped; upgrades under way finish."""
    ROLLOUT.change(rollout, RolloutState.CANCELLED, finished_at=timezone.now())
    RolloutTarget.objects.filter(rollout=rollout, state=TargetState.PENDING).update(state=TargetState.SKIPPED)
    return rollout


def release_make_default(*, release: Release) -> Release:
    """The release new signups get; the previous default goes back to available."""
    with transaction.atomic():
        for current in Release.objects.select_for_update().filter(state=ReleaseState.DEFAULT).exclude(pk=release.pk):
            RELEASE.change(current, ReleaseState.AVAILABLE)
        if release.state != ReleaseState.DEFAULT:
            RELEASE.change(release, ReleaseState.DEFAULT)
    return release


# ---- the tick -----------------------------------------------------------------------------------------


def instance_upgrade(*, instance: Instance, release: Release, requested_by=None) -> Operation:
    """Queue an upgrade of one instance to ``release`` (outside any rollout too). Refused, naming the
    state, unless the instance is running or stopped; pinned instances are upgraded only this way.
    ``OperationInProgress`` while work that excludes an upgrade (a restore, a stop, …) is queued or running."""
    with transaction.atomic():
        operation_refuse_conflicts(kind=OperationKind.UPGRADE, instance=instance)  # under the instance's row lock
        instance.refresh_from_db(fields=["state"])
        if instance.state not in UPGRADABLE_STATES:
            raise IllegalTransition(instance, instance.state, InstanceState.UPGRADING)
        if release.state not in (ReleaseState.AVAILABLE, ReleaseState.DEFAULT):
            raise IllegalTransition(release, release.state, "installed")
        return operation_create(
            kind=OperationKind.UPGRADE, instance=instance, requested_by=requested_by,
            params={"version": release.version, "image": release.image},
        )


def _sync_finished_upgrades(rollout: Rollout) -> None:
    """Targets whose upgrade operation ended take its outcome (two UPDATEs)."""
    in_flight = RolloutTarget.objects.filter(rollout=rollout, state=TargetState.UPGRADING)
    in_flight.filter(operation__state=OperationState.SUCCEEDED).update(state=TargetState.SUCCEEDED,
                                                                       finished_at=timezone.now())
    # A cancelled upgrade did not upgrade the instance: it counts against the wave like a failed one.
    in_flight.filter(operation__state__in=sorted(str(s) for s in OPERATION_RETRYABLE_STATES)).update(
        state=TargetState.FAILED, finished_at=timezone.now()
    )


def _wave_counts(wave: RolloutWave) -> dict[str, int]:
    rows = RolloutTarget.objects.filter(wave=wave).values("state").annotate(n=Count("pk")).order_by()
    counts = {state: 0 for state in TargetState.values}
    counts.update({row["state"]: row["n"] for row in rows})
    return counts


def _halt_if_failing(rollout: Rollout, wave: RolloutWave, counts: dict[str, int]) -> bool:
    failed, total = counts[TargetState.FAILED], max(wave.total, 1)
    if failed <= rollout.max_failures and failed / total <= rollout.max_failure_ratio:
        return False
    names = list(
        RolloutTarget.objects.filter(wave=wave, state=TargetState.FAILED)
        .order_by("instance__name").values_list("instance__name", flat=True)[:20]
    )
    reason = (
        f"wave {wave.position + 1} (ring {wave.ring}): {failed} of {wave.total} upgrades failed "
        f"(limit {rollout.max_failures} or {rollout.max_failure_ratio:.0%}): {', '.join(names)}"
    )
    ROLLOUT.change(rollout, RolloutState.HALTED, halt_reason=reason)
    logger.warning("rollout %s halted: %s", rollout.pk, reason)
    return True


def _start_upgrades(rollout: Rollout, wave: RolloutWave, in_flight: int, now: datetime) -> int:
    """Start up to batch_size − in_flight upgrades among the wave's pending targets whose window is open.

    Set-based, so its cost does not grow with the batch: skip the targets whose instance left the upgradable states
    or was pinned (two ``UPDATE``), lock the chosen targets (one ``SELECT``), make their upgrade operations with the
    rule of ``instance_upgrade`` (``operations_create_for_instances``: four statements) and record each target's
    outcome (one ``UPDATE``); a refused target stays pending with the reason in its note.
    """
    room = rollout.batch_size - in_flight
    if room <= 0:
        return 0
    release = rollout.release
    if release.state not in (ReleaseState.AVAILABLE, ReleaseState.DEFAULT):
        logger.warning("rollout %s: release %s is %s and cannot be installed", rollout.pk, release, release.state)
        return 0
    pending = RolloutTarget.objects.filter(wave=wave, state=TargetState.PENDING)
    # Instances that left the upgradable states, or were pinned since planning, are skipped.
    pending.exclude(instance__state__in=UPGRADABLE_STATES).update(state=TargetState.SKIPPED, note="not running")
    pending.filter(instance__version_pinned=True).update(state=TargetState.SKIPPED, note="pinned")
    chosen = dict(
        annotate_window(pending, now)
        .filter(window_offset__lt=Instance.MAINTENANCE_WINDOW_MINUTES)
        .select_for_update(of=("self",))
        .order_by("pk")
        .values_list("pk", "instance_id")[:room]
    )
    if not chosen:
        return 0
    made, refused = operations_create_for_instances(
        kind=OperationKind.UPGRADE, instance_ids=list(chosen.values()), allowed_states=UPGRADABLE_STATES,
        requested_by=rollout.created_by, params={"version": release.version, "image": release.image},
    )
    started = {pk: made[instance_id].pk for pk, instance_id in chosen.items() if instance_id in made}
    notes = {pk: refused[instance_id][:250] for pk, instance_id in chosen.items() if instance_id in refused}
    if started:
        RolloutTarget.objects.filter(pk__in=list(started), state=TargetState.PENDING).update(
            state=TargetState.UPGRADING, started_at=now,
            operation_id=Case(*(When(pk=pk, then=Value(operation_id)) for pk, operation_id in started.items())),
        )
    if notes:
        RolloutTarget.objects.filter(pk__in=list(notes)).update(
            note=Case(*(When(pk=pk, then=Value(note)) for pk, note in notes.items()), output_field=CharField())
        )
    return len(started)


def _advance(rollout: Rollout, now: datetime) -> None:
    _sync_finished_upgrades(rollout)
    for wave in RolloutWave.objects.filter(rollout=rollout).exclude(state=WaveState.DONE).order_by("position"):
        counts = _wave_counts(wave)
        RolloutWave.objects.filter(pk=wave.pk).update(
            succeeded=counts[TargetState.SUCCEEDED], failed=counts[TargetState.FAILED],
            skipped=counts[TargetState.SKIPPED], upgrading=counts[TargetState.UPGRADING],
        )
        if _halt_if_failing(rollout, wave, counts):
            return
        if wave.state == WaveState.PENDING:
            RolloutWave.objects.filter(pk=wave.pk).update(state=WaveState.RUNNING, started_at=now)
            wave.state = WaveState.RUNNING
        if wave.state == WaveState.RUNNING:
            if counts[TargetState.PENDING] or counts[TargetState.UPGRADING]:
                _start_upgrades(rollout, wave, counts[TargetState.UPGRADING], now)
                return
            bake_until = now + timedelta(minutes=rollout.bake_minutes)
            RolloutWave.objects.filter(pk=wave.pk).update(state=WaveState.BAKING, bake_until=bake_until)
            wave.state, wave.bake_until = WaveState.BAKING, bake_until
        if wave.state == WaveState.BAKING:
            if now < wave.bake_until:
                return
            RolloutWave.objects.filter(pk=wave.pk).update(state=WaveState.DONE, finished_at=now)
    ROLLOUT.change(rollout, RolloutState.COMPLETED, finished_at=now)


def rollouts_tick(*, now: datetime | None = None) -> list[int]:
    """Advance every running rollout one step; returns the ids this worker advanced (others skip them)."""
    now = now or timezone.now()
    advanced = []
    for rollout_id in Rollout.objects.filter(state=RolloutState.RUNNING).values_list("pk", flat=True):
        with transaction.atomic():
            rollout = (
                Rollout.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("release", "created_by")
                .filter(pk=rollout_id, state=RolloutState.RUNNING)
                .first()
            )
            if rollout is None:  # another worker is ticking it, or it stopped meanwhile
                continue
            _advance(rollout, now)
            advanced.append(rollout_id)
    return advanced
