"""Route 53: one record per instance, ``<name>.<hub domain>`` → the reef's ingress.

The hosted zone is ``CELLHUB_ROUTE53_ZONE_ID`` when set, else the hosted zone whose name is the hub domain
or its nearest parent (looked up once). Credentials come from boto3's chain. An IPv4 address makes an
A record, IPv6 AAAA, a host name (a load balancer's) CNAME; the other types at that name are removed
in the same change batch, so exactly one remains.
"""
from __future__ import annotations

import ipaddress
import os

from django.conf import settings

from provisioning.drivers.base import DnsDriver, PermanentDriverError
from provisioning.drivers.cloud_retry import aws_client, cloud_call

RECORD_TYPES = ("A", "AAAA", "CNAME")


def record_type(address: str) -> str:
    """``A`` for an IPv4 address, ``AAAA`` for IPv6, ``CNAME`` for a host name."""
    try:
        return "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
    except ValueError:
        return "CNAME"


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


class Route53DnsDriver(DnsDriver):
    """Records in one Route 53 hosted zone; every call through ``cloud_call``, idempotent."""

    provider = "route53"
    label = "AWS Route 53"
    default_for_clouds = ("aws",)

    def __init__(self, region, zone: str):
        super().__init__(region, zone)
        self._client = None
        self._zone_id = os.environ.get("CELLHUB_ROUTE53_ZONE_ID", "").removeprefix("/hostedzone/")

    @property
    def client(self):
        if self._client is None:
            self._client = aws_client("route53", None)
        return self._client

    @property
    def zone_id(self) -> str:
        """The hosted zone's id; raises ``PermanentDriverError`` when no hosted zone holds the hub domain."""
        if not self._zone_id:
            wanted = _absolute(self.zone)

            def find():
                best = None
                for page in self.client.get_paginator("list_hosted_zones").paginate():
                    for hosted_zone in page["HostedZones"]:
                        name = hosted_zone["Name"]
                        if (wanted == name or wanted.endswith("." + name)) and (
                            best is None or len(name) > len(best["Name"])
                        ):
                            best = hosted_zone
                return best

            found = cloud_call(f"find the Route 53 hosted zone of {self.zone}", find)
            if found is None:
                raise PermanentDriverError(
                    f"Route 53: no hosted zone holds {self.zone}; create one or set CELLHUB_ROUTE53_ZONE_ID"
                )
            self._zone_id = found["Id"].removeprefix("/hostedzone/")
        return self._zone_id

    def _record_sets(self, fqdn: str) -> list[dict]:
        """The A/AAAA/CNAME record sets named exactly ``fqdn``."""
        wanted = _absolute(fqdn)
        response = cloud_call(
            f"read Route 53 records of {fqdn}",
            lambda: self.client.list_resource_record_sets(
                HostedZoneId=self.zone_id, StartRecordName=wanted, MaxItems="10"
            ),
        )
        return [
            record_set
            for record_set in response["ResourceRecordSets"]
            if record_set["Name"] == wanted and record_set["Type"] in RECORD_TYPES
        ]

    def _change(self, fqdn: str, changes: list[dict]) -> None:
        if changes:
            cloud_call(
                f"change Route 53 records of {fqdn}",
                lambda: self.client.change_resource_record_sets(
                    HostedZoneId=self.zone_id, ChangeBatch={"Comment": "cellhub", "Changes": changes}
                ),
            )

    def upsert_record(self, *, name: str, address: str, port: int | None = None) -> None:
        """Point ``name`` at ``address``, replacing any record of another type at that name."""
        fqdn, kind = self.fqdn(name), record_type(address)
        changes = [
            {"Action": "DELETE", "ResourceRecordSet": record_set}
            for record_set in self._record_sets(fqdn)
            if record_set["Type"] != kind
        ]
        changes.append(
            {
                "Action": "UPSERT",
                "ResourceRecordSet": {
                    "Name": _absolute(fqdn),
                    "Type": kind,
                    "TTL": int(settings.CELLHUB.get("DNS_TTL", 300)),
                    "ResourceRecords": [{"Value": address}],
                },
            }
        )
        self._change(fqdn, changes)

    def delete_record(self, *, name: str) -> None:
        """Remove the A/AAAA/CNAME records of ``name`` (Route 53 deletes need the current values); absent is fine."""
        fqdn = self.fqdn(name)
        self._change(fqdn, [{"Action": "DELETE", "ResourceRecordSet": rs} for rs in self._record_sets(fqdn)])

    def lookup(self, *, name: str) -> str | None:
        for record_set in self._record_sets(self.fqdn(name)):
            records = record_set.get("ResourceRecords") or []
            if records:
                return records[0]["Value"]
        return None

    def list_records(self) -> dict[str, str]:
        """Instance name → address of the A/AAAA/CNAME records directly under the hub domain."""
        suffix = "." + _absolute(self.zone)

        def collect():
            records = {}
            paginator = self.client.get_paginator("list_resource_record_sets")
            for page in paginator.paginate(HostedZoneId=self.zone_id):
                for record_set in page["ResourceRecordSets"]:
                    name = record_set["Name"]
                    values = record_set.get("ResourceRecords") or []
                    if record_set["Type"] in RECORD_TYPES and name.endswith(suffix) and values:
                        records[name[: -len(suffix)]] = values[0]["Value"]
            return records

        return cloud_call(f"list Route 53 records of {self.zone}", collect)
