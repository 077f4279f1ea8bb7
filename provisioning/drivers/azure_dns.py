"""Azure DNS: one record set per instance, ``<name>.<hub domain>`` → the reef's ingress.

Settings come from the environment (the region row holds no cloud account details):
``AZURE_SUBSCRIPTION_ID`` and ``CELLHUB_AZURE_DNS_RESOURCE_GROUP`` are required;
``CELLHUB_AZURE_DNS_ZONE`` names the Azure DNS zone when it is a parent of the hub domain (default: the
hub domain itself). An address that is an IPv4 address makes an A record, an IPv6 one AAAA, anything else
(a load balancer's host name) a CNAME; the other types at that name are removed, so exactly one remains.
"""
from __future__ import annotations

import ipaddress
import os

from azure.mgmt.dns import DnsManagementClient
from azure.mgmt.dns.models import AaaaRecord, ARecord, CnameRecord, RecordSet
from django.conf import settings

from provisioning.drivers.base import DnsDriver, PermanentDriverError
from provisioning.drivers.cloud_retry import CloudNotFoundError, azure_client, cloud_call

RECORD_TYPES = ("A", "AAAA", "CNAME")


def record_type(address: str) -> str:
    """``A`` for an IPv4 address, ``AAAA`` for IPv6, ``CNAME`` for a host name."""
    try:
        return "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
    except ValueError:
        return "CNAME"


def _record_set(kind: str, address: str, ttl: int) -> RecordSet:
    if kind == "A":
        return RecordSet(ttl=ttl, a_records=[ARecord(ipv4_address=address)])
    if kind == "AAAA":
        return RecordSet(ttl=ttl, aaaa_records=[AaaaRecord(ipv6_address=address)])
    return RecordSet(ttl=ttl, cname_record=CnameRecord(cname=address))


def _address_of(record_set: RecordSet) -> str | None:
    if record_set.a_records:
        return record_set.a_records[0].ipv4_address
    if record_set.aaaa_records:
        return record_set.aaaa_records[0].ipv6_address
    if record_set.cname_record:
        return record_set.cname_record.cname
    return None


class AzureDnsDriver(DnsDriver):
    """Record sets in one Azure DNS zone; every ARM call through ``cloud_call``, idempotent."""

    provider = "azure_dns"
    label = "Azure DNS"
    default_for_clouds = ("azure",)

    def __init__(self, region, zone: str, *, credential=None, transport=None):
        super().__init__(region, zone)
        self._credential, self._transport = credential, transport
        self._client: DnsManagementClient | None = None

    @property
    def subscription_id(self) -> str:
        return settings.CELLHUB.get("AZURE_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID", "")

    @property
    def resource_group(self) -> str:
        return settings.CELLHUB.get("AZURE_DNS_RESOURCE_GROUP") or os.environ.get(
            "CELLHUB_AZURE_DNS_RESOURCE_GROUP", ""
        )

    @property
    def dns_zone(self) -> str:
        return os.environ.get("CELLHUB_AZURE_DNS_ZONE") or self.zone

    @property
    def client(self) -> DnsManagementClient:
        """Raises ``PermanentDriverError`` naming the environment variables that are missing."""
        missing = [
            name
            for name, value in (
                ("AZURE_SUBSCRIPTION_ID", self.subscription_id),
                ("CELLHUB_AZURE_DNS_RESOURCE_GROUP", self.resource_group),
            )
            if not value
        ]
        if missing:
            raise PermanentDriverError(f"Azure DNS: set {' and '.join(missing)}")
        if self._client is None:
            self._client = azure_client(
                DnsManagementClient, self.subscription_id, credential=self._credential, transport=self._transport
            )
        return self._client

    def relative_name(self, name: str) -> str:
        """The record set's name inside the Azure zone (``name`` itself when the zone is the hub domain)."""
        fqdn, zone = self.fqdn(name).rstrip("."), self.dns_zone.rstrip(".")
        if fqdn == zone:
            return "@"
        if not fqdn.endswith("." + zone):
            raise PermanentDriverError(f"Azure DNS: {fqdn} is not inside the zone {zone}")
        return fqdn[: -len(zone) - 1]

    def _get(self, relative: str, kind: str) -> RecordSet | None:
        try:
            return cloud_call(
                f"read DNS record {kind} {relative}.{self.dns_zone}",
                lambda: self.client.record_sets.get(self.resource_group, self.dns_zone, relative, kind),
            )
        except CloudNotFoundError:
            return None

    def _delete(self, relative: str, kind: str) -> None:
        try:
            cloud_call(
                f"delete DNS record {kind} {relative}.{self.dns_zone}",
                lambda: self.client.record_sets.delete(self.resource_group, self.dns_zone, relative, kind),
            )
        except CloudNotFoundError:
            pass

    def upsert_record(self, *, name: str, address: str, port: int | None = None) -> None:
        """Point ``name`` at ``address`` (A, AAAA or CNAME by its form); the other types at the name go."""
        relative, kind = self.relative_name(name), record_type(address)
        for other in RECORD_TYPES:
            if other != kind and self._get(relative, other) is not None:
                self._delete(relative, other)
        ttl = int(settings.CELLHUB.get("DNS_TTL", 300))
        cloud_call(
            f"write DNS record {kind} {relative}.{self.dns_zone}",
            lambda: self.client.record_sets.create_or_update(
                self.resource_group, self.dns_zone, relative, kind, _record_set(kind, address, ttl)
            ),
        )

    def delete_record(self, *, name: str) -> None:
        """Remove every A, AAAA and CNAME record of ``name``; absent is fine."""
        relative = self.relative_name(name)
        for kind in RECORD_TYPES:
            self._delete(relative, kind)

    def lookup(self, *, name: str) -> str | None:
        relative = self.relative_name(name)
        for kind in RECORD_TYPES:
            found = self._get(relative, kind)
            if found is not None:
                return _address_of(found)
        return None

    def list_records(self) -> dict[str, str]:
        """Instance name → address of the A/AAAA/CNAME records under the hub domain."""
        zone = self.dns_zone.rstrip(".")
        suffix = self.zone.rstrip(".")
        record_sets = cloud_call(
            f"list DNS records of {zone}",
            lambda: list(self.client.record_sets.list_by_dns_zone(self.resource_group, zone)),
        )
        records = {}
        for record_set in record_sets:
            if (record_set.type or "").rsplit("/", 1)[-1] not in RECORD_TYPES or record_set.name == "@":
                continue
            fqdn = f"{record_set.name}.{zone}"
            if fqdn.endswith("." + suffix):
                address = _address_of(record_set)
                if address:
                    records[fqdn[: -len(suffix) - 1]] = address
        return records
