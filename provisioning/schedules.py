"""The hub's recurring work, by name, written to django-q2's schedule table idempotently.

``schedules_sync()`` runs after every ``migrate`` (post_migrate) and from ``manage.py sync_schedules``:
it creates or updates each schedule by name and never duplicates one, however often it runs.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Recurring:
    name: str
    func: str  # dotted path of a task in provisioning.tasks: it takes no arguments
    minutes: int
    description: str


RECURRING = [
    Recurring("capacity top-up", "provisioning.tasks.capacity_top_up_pass", 5,
              "Order pools for reefs whose free slots run out within lead time + margin."),
    Recurring("scheduled backups", "provisioning.tasks.backups_run_due", 15,
              "Start the backups that are due by each instance's cadence."),
    Recurring("base backups", "provisioning.tasks.base_backups_run_due", 60,
              "Take a base backup of each managed PostgreSQL pool that has none within BASE_BACKUP_EVERY_HOURS."),
    Recurring("backup retention", "provisioning.tasks.backups_expire", 60,
              "Delete expired backups and purge archives past their retention."),
    Recurring("rollout tick", "provisioning.tasks.rollouts_tick", 1,
              "Advance running rollouts: start upgrades in open maintenance windows, bake, halt on failures."),
    Recurring("operation watchdog", "provisioning.tasks.operations_watch", 1,
              "Requeue once, then fail, operations stuck queued or running past their limits."),
    Recurring("health checks", "provisioning.tasks.health_check_pass", 5,
              "Check every running instance; restart the unhealthy, then flag them for staff."),
    Recurring("reconcile", "provisioning.tasks.reconcile_pass", 30,
              "Compare what the drivers report with the hub's rows and record orphans both ways."),
]


def schedules_sync() -> list[str]:
    """Create or update every recurring schedule by name; returns their names."""
    from django_q.models import Schedule

    for recurring in RECURRING:
        Schedule.objects.update_or_create(
            name=recurring.name,
            defaults={
                "func": recurring.func,
                "schedule_type": Schedule.MINUTES,
                "minutes": recurring.minutes,
                "repeats": -1,
            },
        )
    return [recurring.name for recurring in RECURRING]
