"""Top-up thresholds: the domain's defaults, ``CELLHUB["CAPACITY"]`` over them, and per reef
``Reef.capacity_overrides``; their validation and how one reef's and kind's thresholds are read.

Keys (settings and overrides use the same ones):

- ``FLOOR``: free slots never to go under, whatever the signup rate;
- ``LEAD_TIME_HOURS``: how long a new pool takes to become available;
- ``POOL_SIZE``: slots of a new pool (a storage pool's shares);
- ``PROVIDER``: the provider of new pools (unset: the reef's newest pool of the kind, else ``PROVIDER_BY_CLOUD``);
- ``MARGIN_HOURS``: headroom wanted beyond the lead time;
- ``SIGNUP_WINDOW_HOURS``: the recent past the signup rate is measured over;
- ``MAX_POOLS_PER_PASS``: pools one pass may order per reef and kind (0 turns automatic top-ups off).

``FLOOR``, ``LEAD_TIME_HOURS`` and ``POOL_SIZE`` are keyed by pool kind or by provider; a provider's entry
wins over its kind's. Settings only: ``PROVIDER_BY_CLOUD`` (the provider per kind of a region's cloud, for
a reef with no pool of the kind yet) and ``NEW_POOL_CONFIG`` (provider → config merged into new pools).
An override dict is merged key by key onto the setting's dict.

Per-provider defaults (each provider's ``LEAD_TIME_HOURS``, ``PROVIDER_BY_CLOUD``) are declared by the drivers,
which the kernel does not know: ``provisioning.capacity.thresholds.capacity_settings`` lays them between
``DEFAULTS`` and the settings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from cells.choices import PROVIDERS_BY_KIND, PoolKind, Provider

DEFAULTS = {
    "FLOOR": {PoolKind.DATABASE: 5, PoolKind.STORAGE: 5, PoolKind.COMPUTE: 5},
    "LEAD_TIME_HOURS": {},  # per provider: declared by its driver
    "POOL_SIZE": {PoolKind.DATABASE: 100, PoolKind.STORAGE: 10, PoolKind.COMPUTE: 100},
    "PROVIDER": {},
    "MARGIN_HOURS": 24.0,
    "SIGNUP_WINDOW_HOURS": 48.0,
    "MAX_POOLS_PER_PASS": 2,
    "PROVIDER_BY_CLOUD": {},  # cloud → kind → provider: declared by the drivers
    "NEW_POOL_CONFIG": {},
}
# What a reef may override, and the shape of each value.
_BY_KIND_OR_PROVIDER = {"FLOOR": (int, 0), "LEAD_TIME_HOURS": (float, 0), "POOL_SIZE": (int, 1)}
_SCALARS = {"MARGIN_HOURS": (float, 0), "SIGNUP_WINDOW_HOURS": (float, 1), "MAX_POOLS_PER_PASS": (int, 0)}
OVERRIDABLE = (*_BY_KIND_OR_PROVIDER, "PROVIDER", *_SCALARS)
_KINDS = [str(kind) for kind in PoolKind]
_PROVIDERS = [str(provider) for provider in Provider]


@dataclass(frozen=True)
class Thresholds:
    """What the planner compares one reef's slots of one kind with."""

    floor: int
    lead_time_hours: float
    margin_hours: float
    window_hours: float
    pool_size: int
    max_pools_per_pass: int


def merge(base: dict, overrides: dict) -> dict:
    """``overrides`` over ``base``: a dict value is merged key by key onto the base's dict, others replace."""
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def effective(overrides: dict | None, base: dict) -> dict:
    """The capacity settings of a reef: ``base`` (the hub's) with the reef's ``overrides``."""
    return merge(base, overrides or {})


def _by_kind_or_provider(table: dict, kind: str, provider: str, key: str):
    for name in (provider, kind):
        if name in table:
            return table[name]
    raise KeyError(f'CELLHUB["CAPACITY"]["{key}"] has no entry for {provider} nor {kind}')


def thresholds_for(config: dict, *, kind: str, provider: str) -> Thresholds:
    """The thresholds of ``kind`` pools of ``provider`` under the (effective) capacity ``config``."""
    return Thresholds(
        floor=int(_by_kind_or_provider(config["FLOOR"], kind, provider, "FLOOR")),
        lead_time_hours=float(_by_kind_or_provider(config["LEAD_TIME_HOURS"], kind, provider, "LEAD_TIME_HOURS")),
        margin_hours=float(config["MARGIN_HOURS"]),
        window_hours=float(config["SIGNUP_WINDOW_HOURS"]),
        pool_size=int(_by_kind_or_provider(config["POOL_SIZE"], kind, provider, "POOL_SIZE")),
        max_pools_per_pass=int(config["MAX_POOLS_PER_PASS"]),
    )


def provider_for(config: dict, *, kind: str, newest_provider: str | None, cloud: str) -> str:
    """The provider of a reef's next ``kind`` pool: configured, else its newest pool's, else its cloud's default."""
    return config["PROVIDER"].get(kind) or newest_provider or config["PROVIDER_BY_CLOUD"][cloud][kind]


def _number(value, kind: type, minimum: float, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not float(value).is_integer()):
        raise ValidationError(f"{where}: {value!r} is not {'a whole number' if kind is int else 'a number'}")
    if not math.isfinite(value) or value < minimum:
        raise ValidationError(f"{where}: {value!r} is below {minimum}")


def thresholds_validate(overrides) -> None:
    """Raise ``ValidationError`` unless ``overrides`` names known keys with values of the right shape.

    Example: ``{"FLOOR": {"storage": 20}, "LEAD_TIME_HOURS": {"aws_storage_gateway": 6}, "MARGIN_HOURS": 12}``.
    """
    if not isinstance(overrides, dict):
        raise ValidationError("capacity overrides must be a JSON object, e.g. {\"FLOOR\": {\"storage\": 20}}")
    for key, value in overrides.items():
        if key not in OVERRIDABLE:
            raise ValidationError(f"unknown capacity key {key!r}; known: {', '.join(OVERRIDABLE)}")
        if key in _SCALARS:
            _number(value, *_SCALARS[key], where=key)
            continue
        if not isinstance(value, dict):
            keys = "pool kind" if key == "PROVIDER" else "pool kind or provider"
            raise ValidationError(f"{key} must be an object keyed by {keys}")
        for name, entry in value.items():
            where = f"{key}.{name}"
            if key == "PROVIDER":
                if name not in _KINDS:
                    raise ValidationError(f"{where}: unknown pool kind; known: {', '.join(_KINDS)}")
                allowed = [str(p) for p in PROVIDERS_BY_KIND[PoolKind(name)]]
                if entry not in allowed:
                    raise ValidationError(f"{where}: {entry!r} is not a {name} provider; known: {', '.join(allowed)}")
                continue
            if name not in _KINDS and name not in _PROVIDERS:
                raise ValidationError(f"{where}: neither a pool kind nor a provider")
            _number(entry, *_BY_KIND_OR_PROVIDER[key], where=where)
