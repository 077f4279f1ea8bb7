"""A pool's cloud metric alarms, as its provider reports them (shown beside the pool's health in the admin)."""
from __future__ import annotations

from cells.models import Pool
from provisioning import drivers
from provisioning.drivers.base import DriverError


def pool_alarm_states(*, pool: Pool) -> dict[str, str] | str:
    """The pool's cloud metric alarms (CloudWatch, Azure Monitor) and their states, as the provider reports them;
    an empty dict when its provider has none; a sentence when the provider cannot be read (never raises)."""
    try:
        return drivers.for_pool(pool).alarm_states()
    except DriverError as error:
        return f"alarm states unavailable: {error}"
