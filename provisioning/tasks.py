"""django-q2 task entry points: thin, they take ids (or nothing) and call services; safe to repeat."""
from provisioning.operations import operation_run


def operation_execute(operation_id: int) -> str | None:
    """Run (or resume) one operation; safe to deliver more than once."""
    return operation_run(operation_id)


def capacity_top_up_pass() -> list[int]:
    """The scheduled capacity pass: returns the ids of the top-up operations it started."""
    from provisioning.capacity import capacity_top_up_pass as top_up_pass

    return top_up_pass()


def backups_run_due() -> list[int]:
    """The scheduled backup pass: returns the ids of the backup operations it started."""
    from provisioning.backups import backups_run_due as run_due

    return run_due()


def backups_expire() -> int:
    """Retention: deletes expired backups and purgeable archives; returns how many went."""
    from provisioning.backups import backups_expire as expire

    return expire()


def operations_watch() -> dict:
    """The watchdog: requeues each stuck operation once, then fails it with the reason; settles owed clean-ups."""
    from provisioning.watchdog import operations_watch as watch

    return watch()


def health_check_pass() -> dict:
    """Health checks of every running instance: restart the unhealthy (bounded, with backoff), then flag them."""
    from provisioning.health import health_check_pass as check

    return check()


def reconcile_pass() -> dict:
    """The reconciler: lists every pool's resources and every DNS zone and records the disagreements."""
    from provisioning.reconcile import reconcile_pass as reconcile

    return reconcile()


def rollouts_tick() -> list[int]:
    """Advance every running rollout one step; safe on many workers at once. Returns the ids it advanced."""
    from provisioning.rollouts import rollouts_tick as tick

    return tick()
