"""Refusals of the backup, restore and decommission services: each says why, and what would be accepted."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cells.models import Operation


class Refused(ValueError):
    """A request the hub will not start; ``field`` names the input at fault (None: not the input's fault),
    ``current_state`` the target's state when that is the reason."""

    def __init__(self, message: str, field: str | None = None, *, current_state: str | None = None):
        super().__init__(message)
        self.field = field
        self.current_state = current_state


class BackupRefused(Refused):
    """A backup that cannot start (the instance's state, a missing database or share)."""


class RestoreRefused(Refused):
    """A restore that cannot start (the time outside the window, the backup unusable, the state, the provider)."""


class DecommissionRefused(Refused):
    """A decommission that cannot start (the name typed does not match, other work is under way)."""


class AlreadyUnderWay(Refused):
    """Another operation on the instance must finish first."""

    def __init__(self, operation: Operation, message: str | None = None):
        self.operation = operation
        super().__init__(
            message
            or f"a {operation.kind} of {operation.instance} is already {operation.state} (operation #{operation.pk}); "
            "try again when it has finished"
        )
