"""One DNS provider per hub domain: every instance record lives under ``CELLHUB_DOMAIN``, so one provider serves it.

Each region's DNS driver is ``CELLHUB_DNS_PROVIDER`` when set, else the one its cloud defaults to
(``drivers.for_dns``). With regions in two clouds and no ``CELLHUB_DNS_PROVIDER``, one domain would be split
between Route 53 and Azure DNS (or a local zone file): half the names would never resolve. This module refuses
that — a system check for the configuration as it is, and a refusal when a region is created or changed.
"""
from __future__ import annotations

from django.conf import settings
from django.core import checks
from django.db import DatabaseError

from cells.errors import Refused
from cells.models import Region
from provisioning import drivers


def dns_provider_for(cloud: str) -> str:
    """The DNS provider a region of ``cloud`` uses: ``CELLHUB_DNS_PROVIDER``, else its cloud's default ('' if none)."""
    if settings.CELLHUB["DNS_PROVIDER"]:
        return settings.CELLHUB["DNS_PROVIDER"]
    return next((name for name, cls in sorted(drivers.dns_registry().items()) if cloud in cls.default_for_clouds), "")


def dns_providers_in_use(
    *, extra_cloud: str | None = None, ignore_region_id: int | None = None
) -> dict[str, list[str]]:
    """DNS provider → the regions (slugs) that would use it, with a region of ``extra_cloud`` added if given."""
    using: dict[str, list[str]] = {}
    for region in Region.objects.exclude(pk=ignore_region_id).order_by("slug"):
        using.setdefault(dns_provider_for(region.cloud), []).append(region.slug)
    if extra_cloud is not None:
        using.setdefault(dns_provider_for(extra_cloud), []).append(f"(a new {extra_cloud} region)")
    return using


def region_refuse_split_dns(*, cloud: str, ignore_region_id: int | None = None) -> None:
    """Raise ``Refused`` (field ``cloud``, code ``dns_split``) when a region of ``cloud`` would make the hub domain
    served by two DNS providers; ``ignore_region_id``: the region being changed."""
    using = dns_providers_in_use(extra_cloud=cloud, ignore_region_id=ignore_region_id)
    if len(using) > 1:
        described = "; ".join(f"{provider or 'none'}: {', '.join(regions)}" for provider, regions in using.items())
        raise Refused(
            f"one DNS provider serves {settings.CELLHUB['HUB_DOMAIN']}: a {cloud} region would split it ({described}); "
            "set CELLHUB_DNS_PROVIDER to the one provider for every region",
            code="dns_split", field="cloud",
        )


def check_one_dns_provider(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """System check ``cellhub.E020``: the regions as they are use one DNS provider for the hub domain."""
    try:
        using = dns_providers_in_use()
    except DatabaseError:  # no tables yet (before migrate): nothing to check
        return []
    if len(using) <= 1:
        return []
    described = "; ".join(f"{provider or 'none'}: {', '.join(regions)}" for provider, regions in using.items())
    return [checks.Error(
        f"the hub domain {settings.CELLHUB['HUB_DOMAIN']} is split between DNS providers ({described})",
        hint="set CELLHUB_DNS_PROVIDER to the one provider that serves every region (docs/clouds.md)",
        id="cellhub.E020",
    )]
