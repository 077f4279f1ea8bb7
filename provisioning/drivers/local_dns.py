"""The local DNS driver: a zone file ``var/dns/<zone>.zone`` with one record per instance.

Rewritten atomically under a file lock, so concurrent workers never lose each other's records.
"""
import ipaddress
from pathlib import Path

from provisioning.drivers.base import DnsDriver
from provisioning.drivers.local_lock import file_lock
from provisioning.drivers.local_paths import var_path, write_atomically


def _record_type(address: str) -> str:
    try:
        return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
    except ValueError:
        return "CNAME"


class ZoneFileDnsDriver(DnsDriver):
    """Records live in a BIND-style zone file; upsert and delete are idempotent."""

    provider = "local"
    label = "Zone file"
    default_for_clouds = ("local",)

    def zone_file(self) -> Path:
        return var_path("dns") / f"{self.zone}.zone"

    def list_records(self) -> dict[str, str]:
        path = self.zone_file()
        if not path.exists():
            return {}
        records = {}
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[2] == "IN":
                records[parts[0]] = parts[4].rstrip(".")
        return records

    def _write(self, records: dict[str, str]) -> None:
        lines = [f"$ORIGIN {self.zone}.", "$TTL 300"]
        for name, address in sorted(records.items()):
            record_type = _record_type(address)
            value = f"{address}." if record_type == "CNAME" else address
            lines.append(f"{name} 300 IN {record_type} {value}")
        write_atomically(self.zone_file(), "\n".join(lines) + "\n")

    def upsert_record(self, *, name: str, address: str) -> None:
        with file_lock(self.zone_file().with_suffix(".lock")):
            records = self.list_records()
            if records.get(name) != address:
                records[name] = address
                self._write(records)

    def delete_record(self, *, name: str) -> None:
        with file_lock(self.zone_file().with_suffix(".lock")):
            records = self.list_records()
            if records.pop(name, None) is not None:
                self._write(records)

    def lookup(self, *, name: str) -> str | None:
        return self.list_records().get(name)
