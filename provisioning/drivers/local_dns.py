"""The local DNS driver: a zone file ``var/dns/<zone>.zone`` with one record per instance.

An instance that listens on a port of its own (the local runtime) also gets an SRV record
``_http._tcp.<name> … SRV 0 0 <port> <name>.<zone>.``, so the zone says the whole address. Rewritten atomically
under a file lock, so concurrent workers never lose each other's records.
"""
import ipaddress
from pathlib import Path

from provisioning.drivers.base import DnsDriver
from provisioning.drivers.local_lock import file_lock
from provisioning.drivers.local_paths import var_path, write_atomically

SRV_PREFIX = "_http._tcp."


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

    def _lines(self) -> list[list[str]]:
        path = self.zone_file()
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def list_records(self) -> dict[str, str]:
        """Instance name → address (A, AAAA or CNAME records)."""
        return {parts[0]: parts[4].rstrip(".") for parts in self._lines() if len(parts) == 5 and parts[2] == "IN"}

    def list_ports(self) -> dict[str, int]:
        """Instance name → the port its SRV record publishes."""
        return {
            parts[0].removeprefix(SRV_PREFIX): int(parts[6])
            for parts in self._lines()
            if len(parts) == 8 and parts[3] == "SRV" and parts[0].startswith(SRV_PREFIX)
        }

    def _write(self, records: dict[str, str], ports: dict[str, int]) -> None:
        lines = [f"$ORIGIN {self.zone}.", "$TTL 300"]
        for name, address in sorted(records.items()):
            record_type = _record_type(address)
            value = f"{address}." if record_type == "CNAME" else address
            lines.append(f"{name} 300 IN {record_type} {value}")
            if name in ports:
                lines.append(f"{SRV_PREFIX}{name} 300 IN SRV 0 0 {ports[name]} {self.fqdn(name)}.")
        write_atomically(self.zone_file(), "\n".join(lines) + "\n")

    def upsert_record(self, *, name: str, address: str, port: int | None = None) -> None:
        with file_lock(self.zone_file().with_suffix(".lock")):
            records, ports = self.list_records(), self.list_ports()
            if records.get(name) != address or ports.get(name) != port:
                records[name] = address
                if port:
                    ports[name] = port
                else:
                    ports.pop(name, None)
                self._write(records, ports)

    def delete_record(self, *, name: str) -> None:
        with file_lock(self.zone_file().with_suffix(".lock")):
            records, ports = self.list_records(), self.list_ports()
            if records.pop(name, None) is not None or ports.pop(name, None) is not None:
                self._write(records, ports)

    def lookup(self, *, name: str) -> str | None:
        return self.list_records().get(name)

    def lookup_address(self, *, name: str) -> str | None:
        """The instance's URL as the zone tells it (``http://<fqdn>:<port>/``), or None without an SRV record."""
        port = self.list_ports().get(name)
        return f"http://{self.fqdn(name)}:{port}/" if port else None
