"""Drivers registered by name: a pool's ``provider`` (or a region's DNS provider) picks one.

Modules are imported on first use, so a cloud SDK loads only where a pool of its provider exists.
"""
from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from provisioning.drivers.base import (  # noqa: F401  (the public face of the package)
    DatabaseDriver,
    DnsDriver,
    DriverError,
    PermanentDriverError,
    StorageDriver,
    TransientDriverError,
)

POOL_DRIVERS = {
    "sqlite": "provisioning.drivers.sqlite.SqliteDatabaseDriver",
    "postgres": "provisioning.drivers.postgres.PostgresDatabaseDriver",
    "azure_sql": "provisioning.drivers.azure_sql.AzureSqlDatabaseDriver",
    "aws_rds": "provisioning.drivers.aws_rds.RdsDatabaseDriver",
    "local_fs": "provisioning.drivers.local_fs.LocalFsStorageDriver",
    "azure_files": "provisioning.drivers.azure_files.AzureFilesStorageDriver",
    "aws_storage_gateway": "provisioning.drivers.aws_storage_gateway.StorageGatewayDriver",
    "local_compute": "provisioning.drivers.local_compute.LocalComputeDriver",
    "kubernetes": "provisioning.drivers.kubernetes.KubernetesComputeDriver",
}

DNS_DRIVERS = {
    "local": "provisioning.drivers.local_dns.ZoneFileDnsDriver",
    "azure_dns": "provisioning.drivers.azure_dns.AzureDnsDriver",
    "route53": "provisioning.drivers.route53.Route53DnsDriver",
}
# A region's cloud picks its DNS provider unless settings name another.
DNS_BY_CLOUD = {"local": "local", "azure": "azure_dns", "aws": "route53"}


def for_pool(pool):
    """The driver of ``pool``'s provider, bound to it. Raises ``PermanentDriverError`` for an unknown one."""
    try:
        path = POOL_DRIVERS[pool.provider]
    except KeyError:
        raise PermanentDriverError(f"no driver registered for provider {pool.provider!r}") from None
    return import_string(path)(pool)


def for_dns(region):
    """The DNS driver of ``region``: ``CELLHUB_DNS_PROVIDER`` if set, else the one of its cloud."""
    name = settings.CELLHUB["DNS_PROVIDER"] or DNS_BY_CLOUD[region.cloud]
    try:
        path = DNS_DRIVERS[name]
    except KeyError:
        raise PermanentDriverError(f"no DNS driver registered for {name!r}") from None
    return import_string(path)(region, settings.CELLHUB["HUB_DOMAIN"])
