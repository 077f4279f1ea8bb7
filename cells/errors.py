"""The one refusal family: every service says "no" with a ``Refused``, and every door translates it in one place.

A refusal is the hub's decision not to do something (bad input, a state that forbids it, work already under
way, no capacity, a capability the provider lacks); it is raised *before* any work starts, so nothing needs
undoing. What a door needs is on the exception:

- ``code``: what kind of refusal, machine-readable (the API's ``error.code``; it picks the HTTP status);
- ``field``: the input at fault, when it is the input's fault (a form puts the message on that field);
- ``current_state``: the target's state when that is the reason;
- ``extra``: further machine-readable facts (e.g. the id of the operation in the way).

Unexpected failures are *not* refusals: they stay ordinary exceptions.
"""
from __future__ import annotations

from typing import Any

INVALID = "invalid"
ILLEGAL_STATE = "illegal_state"
REFUSED = "refused"
OPERATION_IN_PROGRESS = "operation_in_progress"
NO_CAPACITY = "no_capacity"
NOT_SUPPORTED = "not_supported"


class Refused(Exception):
    """The hub will not do this. Without an explicit ``code``: ``invalid`` when a field is at fault,
    ``illegal_state`` when the current state is the reason, else ``refused``."""

    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        current_state: str | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        self.current_state = str(current_state) if current_state is not None else None
        self.extra = extra
        if code is None:
            code = self.default_code or (INVALID if field else ILLEGAL_STATE if current_state else REFUSED)
        self.code = code


class IllegalTransition(Refused):
    """A state change that the current state does not allow (``current`` None: the row is gone)."""

    default_code = ILLEGAL_STATE

    def __init__(self, obj, current: str | None, target: str):
        self.obj = obj
        self.current = current
        self.target = target
        label = obj._meta.verbose_name
        if current is None:
            message = f"{label} {obj.pk} no longer exists"
        else:
            message = f"{label} {obj} is {current}; it cannot become {target}"
        super().__init__(message, current_state=current)


def _a(word) -> str:
    return f"{'an' if str(word)[:1] in 'aeiou' else 'a'} {word}"


class OperationInProgress(Refused):
    """Another operation on the same target must finish first; ``operation`` is the one in the way (its id, kind
    and state are in ``extra`` as ``operation``, ``operation_kind``, ``operation_state``). ``wanted``: the kind
    that was refused, when it differs from the one in the way."""

    default_code = OPERATION_IN_PROGRESS

    def __init__(self, operation, message: str | None = None, *, wanted: str | None = None):
        self.operation = operation
        target = operation.target
        if message is None and (wanted is None or str(wanted) == str(operation.kind)):
            message = (
                f"{_a(operation.kind)} of {target} is already {operation.state} (operation #{operation.pk}); "
                "try again when it has finished"
            )
        elif message is None:
            message = (
                f"{_a(operation.kind)} of {target} is {operation.state} (operation #{operation.pk}); "
                f"{_a(wanted)} must wait until it has finished"
            )
        super().__init__(
            message, operation=operation.pk, operation_kind=str(operation.kind), operation_state=str(operation.state)
        )


class NoCapacity(Refused):
    """No reef in the region has a free slot of every kind right now (staff are told; the customer retries)."""

    default_code = NO_CAPACITY


class NotSupported(Refused):
    """The provider behind the target lacks the capability the request needs (declared by its driver)."""

    default_code = NOT_SUPPORTED
