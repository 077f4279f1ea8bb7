"""Drivers registered by name: a pool's ``provider`` (or a region's DNS provider) picks one.

The registry is the driver classes themselves: every module of this package is imported once, on the first
question, and each concrete ``PoolDriver`` (``DnsDriver``) subclass that declares a ``provider`` is registered
under it. Its class declares everything the hub must know of that provider (``base.PoolDriver``), so adding a
provider is one module here; ``cells.choices.Provider`` and the database's ``pool_provider_matches_kind``
constraint list providers too (cells imports nothing of ours), and ``tests/provisioning/test_driver_declarations.py``
fails until they agree with this registry.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from django.conf import settings

from provisioning.drivers.base import (  # noqa: F401  (the public face of the package)
    DECLARATION,
    Capabilities,
    DatabaseDriver,
    DnsDriver,
    DriverError,
    PermanentDriverError,
    PoolDriver,
    StorageDriver,
    TransientDriverError,
)


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


@cache
def _discovered() -> tuple[dict[str, type[PoolDriver]], dict[str, type[DnsDriver]]]:
    """Import every module of the package once; the concrete drivers by provider, pool and DNS ones apart."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    pools, dns = {}, {}
    for registry, base in ((pools, PoolDriver), (dns, DnsDriver)):
        for cls in _subclasses(base):
            name = vars(cls).get("provider")
            if not name or not cls.__module__.startswith(f"{__name__}."):
                continue  # a kind's base class, or a test's stand-in
            if name in registry and registry[name] is not cls:
                raise ImportError(f"two drivers declare provider {name!r}: {registry[name]} and {cls}")
            registry[name] = cls
    return pools, dns


def registry() -> dict[str, type[PoolDriver]]:
    """Every pool driver class, by the provider it declares."""
    return dict(_discovered()[0])


def dns_registry() -> dict[str, type[DnsDriver]]:
    """Every DNS driver class, by the provider it declares."""
    return dict(_discovered()[1])


def driver_class(provider: str) -> type[PoolDriver]:
    """The driver class of ``provider``. Raises ``PermanentDriverError`` for an unknown one."""
    try:
        return _discovered()[0][str(provider)]
    except KeyError:
        raise PermanentDriverError(f"no driver registered for provider {provider!r}") from None


def capabilities(provider: str) -> Capabilities:
    """What ``provider`` declares it can do (``base.Capabilities``)."""
    return driver_class(provider).capabilities


def host_config_keys(provider: str) -> tuple[str, ...]:
    """Config keys naming a pool's own host: never copied into a new pool or a replacement."""
    return driver_class(provider).host_config_keys


def label(provider: str) -> str:
    return driver_class(provider).label


def capacity_defaults() -> dict:
    """The capacity settings the drivers declare: each provider's lead time, and the provider of a reef's first
    pool of each kind per cloud (``CELLHUB["CAPACITY"]`` keys ``LEAD_TIME_HOURS`` and ``PROVIDER_BY_CLOUD``)."""
    lead_times, by_cloud = {}, {}
    for name, cls in sorted(registry().items()):
        lead_times[name] = cls.lead_time_hours
        for cloud in cls.default_for_clouds:
            by_cloud.setdefault(cloud, {})[cls.kind] = name
    return {"LEAD_TIME_HOURS": lead_times, "PROVIDER_BY_CLOUD": by_cloud}


def for_pool(pool):
    """The driver of ``pool``'s provider, bound to it. Raises ``PermanentDriverError`` for an unknown one."""
    return driver_class(pool.provider)(pool)


def for_dns(region):
    """The DNS driver of ``region``: ``CELLHUB_DNS_PROVIDER`` if set, else the one its cloud defaults to."""
    available = dns_registry()
    name = settings.CELLHUB["DNS_PROVIDER"] or next(
        (provider for provider, cls in sorted(available.items()) if region.cloud in cls.default_for_clouds), ""
    )
    try:
        cls = available[name]
    except KeyError:
        raise PermanentDriverError(f"no DNS driver registered for {name or region.cloud!r}") from None
    return cls(region, settings.CELLHUB["HUB_DOMAIN"])
