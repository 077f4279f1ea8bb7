"""The backup plan: a database backup, a files backup, or both, for one instance.

Steps: database → files. A step whose kind the operation was not asked for does nothing. Each backup
is a ``Backup`` row made by ``backup_take`` under a label derived from its id, so a re-run step
rewrites (or finds) the same stored object. A failure leaves earlier backups untouched.
"""
from __future__ import annotations

from cells.choices import OperationKind
from cells.errors import Refused
from cells.models import Instance, Operation
from provisioning.backups.selectors import BACKUP_STATES
from provisioning.backups.services import backup_take
from provisioning.models import Backup, BackupKind, BackupReason, BackupState
from provisioning.plans.registry import HOURS, Plan, register_plan


def _instance(operation: Operation) -> Instance:
    return Instance.objects.select_related("database_pool").get(pk=operation.instance_id)


def backup_begin(operation: Operation) -> None:
    """Refuse (naming the state) if the instance left the states a backup may run in since it was queued."""
    instance = _instance(operation)
    if instance.state not in BACKUP_STATES:
        raise Refused(f"instance {instance.name} is {instance.state}; its backup does not run")


def _step(kind: str):
    def step(operation: Operation) -> None:
        if kind not in operation.params.get("kinds", []):
            return
        backup_take(
            operation=operation, instance=_instance(operation), kind=kind,
            reason=operation.params.get("reason", BackupReason.ON_DEMAND),
        )

    step.__name__ = f"backup_{kind}"
    step.__doc__ = f"Back the instance's {kind} up, if this operation was asked to."
    return step


def backup_succeed(operation: Operation) -> None:
    """Nothing to change: the backups are recorded as each step finishes."""


def backup_fail(operation: Operation, message: str) -> str:
    """Mark an unfinished backup of this operation failed (a worker that died leaves one running)."""
    unfinished = Backup.objects.filter(operation=operation, state=BackupState.RUNNING)
    unfinished.update(state=BackupState.FAILED, error=message)
    return "earlier backups are untouched; a retry makes the missing backup again"


BACKUP = Plan(
    steps=[("database", _step(BackupKind.DATABASE)), ("files", _step(BackupKind.FILES))],
    begin=backup_begin,
    succeed=backup_succeed,
    fail=backup_fail,
    # A backup only reads: it may run during an upgrade, a stop or a start, never while the instance is being
    # made, restored or taken apart.
    excludes=frozenset({OperationKind.PROVISION, OperationKind.RESTORE, OperationKind.DECOMMISSION}),
    time_limit=6 * HOURS, step_timeout=540.0,
)
register_plan(OperationKind.BACKUP, BACKUP)
