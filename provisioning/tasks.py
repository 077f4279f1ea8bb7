"""django-q2 task entry points: thin, they take ids (or nothing) and call services; safe to repeat.

Schedules (``provisioning.schedules``) and the operation engine name these by dotted path, so the names stay.
"""
from provisioning import backups, capacity, health, operations, reconcile, rollouts, watchdog
from provisioning.backups import base


def operation_execute(operation_id: int) -> str | None:
    """Run (or resume) one operation; safe to deliver more than once."""
    return operations.operation_run(operation_id)


def capacity_top_up_pass() -> list[int]:
    """The scheduled capacity pass: returns the ids of the top-up operations it started."""
    return capacity.capacity_top_up_pass()


def backups_run_due() -> list[int]:
    """The scheduled backup pass: returns the ids of the backup operations it started."""
    return backups.backups_run_due()


def base_backups_run_due() -> list[int]:
    """The base backup pass of managed PostgreSQL pools: returns the ids of the base backups it took."""
    return base.base_backups_run_due()


def backups_expire() -> int:
    """Retention: deletes expired backups and purgeable archives; returns how many went."""
    return backups.backups_expire()


def operations_watch() -> dict:
    """The watchdog: requeues each stuck operation once, then fails it with the reason; settles owed clean-ups."""
    return watchdog.operations_watch()


def health_check_pass() -> dict:
    """Health checks of every running instance: restart the unhealthy (bounded, with backoff), then flag them."""
    return health.health_check_pass()


def reconcile_pass() -> dict:
    """The reconciler: lists every pool's resources and every DNS zone and records the disagreements."""
    return reconcile.reconcile_pass()


def rollouts_tick() -> list[int]:
    """Advance every running rollout one step; safe on many workers at once. Returns the ids it advanced."""
    return rollouts.rollouts_tick()
