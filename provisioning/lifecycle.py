"""Services that start work on an instance's lifecycle (stop, start, provision retry).

Each refuses at once, with ``IllegalTransition`` naming the current state, when the instance cannot
make that change now, and otherwise returns the queued Operation (at most one active per kind).
"""
from django.db import IntegrityError, transaction

from cells.choices import InstanceState, OperationKind, OperationState
from cells.models import Instance, Operation
from cells.states import INSTANCE, IllegalTransition
from provisioning.operations import operation_create, operation_retry


class OperationInProgress(Exception):
    """An operation of the same kind is already queued or running on this target."""

    def __init__(self, operation: Operation):
        self.operation = operation
        super().__init__(f"a {operation.kind} operation (#{operation.pk}) is already {operation.state}")


def _start(instance: Instance, kind: str, target_state: str, requested_by) -> Operation:
    instance.refresh_from_db(fields=["state"])
    if not INSTANCE.can(instance.state, target_state):
        raise IllegalTransition(instance, instance.state, target_state)
    try:
        with transaction.atomic():
            return operation_create(kind=kind, instance=instance, requested_by=requested_by)
    except IntegrityError:
        active = Operation.objects.filter(
            instance=instance, kind=kind, state__in=[OperationState.QUEUED, OperationState.RUNNING]
        ).first()
        if active is None:
            raise
        raise OperationInProgress(active) from None


def instance_stop(*, instance: Instance, requested_by=None) -> Operation:
    """Scale the instance to zero; it keeps its database, share and name."""
    return _start(instance, OperationKind.STOP, InstanceState.STOPPED, requested_by)


def instance_start(*, instance: Instance, requested_by=None) -> Operation:
    """Scale a stopped instance back up."""
    return _start(instance, OperationKind.START, InstanceState.RUNNING, requested_by)


def instance_retry_provision(*, instance: Instance, requested_by=None) -> Operation:
    """Queue the instance's failed provision again; refused unless its latest provision failed."""
    operation = (
        Operation.objects.filter(instance=instance, kind=OperationKind.PROVISION).order_by("-created_at", "-id").first()
    )
    if operation is None:
        raise IllegalTransition(instance, instance.state, "provisioning")
    return operation_retry(operation=operation, requested_by=requested_by)
