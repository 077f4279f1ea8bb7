"""The capacity settings in effect: the domain's defaults (``cells.thresholds``), under what the drivers declare
of their providers (lead times, the provider of each cloud), under ``CELLHUB["CAPACITY"]`` from settings."""
from __future__ import annotations

from django.conf import settings

from cells.thresholds import DEFAULTS, merge
from provisioning import drivers


def capacity_settings() -> dict:
    """``CELLHUB["CAPACITY"]`` over the drivers' declarations over the domain's defaults (dicts merged key by
    key)."""
    return merge(merge(DEFAULTS, drivers.capacity_defaults()), settings.CELLHUB.get("CAPACITY", {}))
