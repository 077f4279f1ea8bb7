"""The interfaces every driver implements, one per kind, and the errors they raise.

Promises common to every driver:
- every method is idempotent: names derive from ids (``resource_name``), "create" on something that
  exists returns it, "delete" on something absent does nothing;
- a failure the caller may retry (a timeout, throttling, a server not answering) raises
  ``TransientDriverError``; one that a retry cannot fix (bad request, quota, a missing pool) raises
  ``PermanentDriverError``;
- nothing secret is read from or written to the hub's database: credentials come from the
  environment or the provider's credential chain, instance passwords from ``derive_secret``.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse
from urllib.request import url2pathname

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from cells.validators import POOL_SECRET_ENV_PREFIX, pool_secret_env_allowed

if TYPE_CHECKING:
    from cells.models import Instance, Pool, Region, Share


class DriverError(Exception):
    """A driver call failed."""


class TransientDriverError(DriverError):
    """A failure that may pass if the same call is repeated later (timeouts, throttling, 5xx)."""


class PermanentDriverError(DriverError):
    """A failure that repeating the call will not fix (bad request, quota, missing resource)."""


def resource_prefix() -> str:
    """Prefix of every resource name the hub creates, so the reconciler can tell ours from others'."""
    return settings.CELLHUB["RESOURCE_PREFIX"]


def resource_name(kind: str, pk: int, *, separator: str = "-") -> str:
    """The deterministic name of a hub resource, e.g. ``cellhub-i42`` for instance 42."""
    return f"{resource_prefix()}{separator}{kind}{pk}"


def derive_secret(purpose: str, pk: int, length: int = 32) -> str:
    """A password derived from the hub's credential key: the same on every call, stored nowhere.

    Rotating ``CELLHUB_CREDENTIAL_KEY`` changes every derived password; a re-run of the database step
    (``create_database``) re-applies the current one.
    """
    key = settings.CELLHUB["CREDENTIAL_KEY"].encode()
    if not key:  # never derive passwords from an empty (guessable) key; see portal.checks
        raise ImproperlyConfigured("CELLHUB_CREDENTIAL_KEY is required to derive instance passwords")
    digest = hmac.new(key, f"{purpose}:{pk}".encode(), hashlib.sha256).hexdigest()
    # Mixed classes so cloud password policies (upper, lower, digit, symbol) accept it.
    return f"Ch{digest[: length - 4]}!9"


@dataclass(frozen=True)
class DatabaseCredentials:
    """How an instance reaches its own database. ``url`` carries the password: never persist it."""

    database: str
    login: str
    password: str
    host: str
    port: int | None
    url: str


@dataclass(frozen=True)
class BackupResult:
    """Where a backup or archive went and what it is."""

    location: str
    size_bytes: int
    checksum: str
    encrypted_with: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentSpec:
    """Everything a compute driver needs to run one instance."""

    name: str
    namespace: str
    image: str
    version: str
    cpu_millicores: int
    memory_mib: int
    hostname: str
    database_url: str
    share_endpoint: str
    share_name: str
    replicas: int = 1
    # What the pod needs to mount the share (``StorageDriver.mount_credentials``), rendered as the Secret
    # ``<name>-storage``; empty when the share mounts without credentials (NFS, a local folder).
    share_credentials: dict = field(default_factory=dict)
    # The port the instance listens on, for drivers that run it on this machine (``capabilities.host_ports``); the hub
    # allocates it (provisioning/ports.py). Clusters serve through their ingress and leave it None.
    port: int | None = None


@dataclass(frozen=True)
class DeploymentStatus:
    exists: bool
    ready_replicas: int = 0
    replicas: int = 0
    image: str = ""
    # What the runtime says the deployment is doing, in words (e.g. "process EXITED (exit status 1)"); may be empty.
    detail: str = ""


def secret_from_environment(pool: Pool, config_key: str, *, what: str, required: bool = True) -> str | None:
    """The secret held by the environment variable whose *name* the pool's config gives under ``config_key``.

    The database stores only the variable's name, and only a name the allow-list admits
    (``CELLHUB_POOL_SECRET_…``, see ``cells.validators.pool_secret_env_allowed``) is read: checked again here,
    at read time, so a config written around the validation still cannot reach the hub's own secrets.
    Raises ``PermanentDriverError`` naming what is missing or refused: the config key (when ``required``), a
    name outside the allow-list, or the variable. Returns None when not required and not configured.
    """
    env_name = (pool.config or {}).get(config_key)
    if not env_name:
        if not required:
            return None
        raise PermanentDriverError(f"pool {pool}: config is missing {config_key}")
    if not pool_secret_env_allowed(env_name):
        raise PermanentDriverError(
            f"pool {pool}: {config_key} names {env_name!r}; only variables starting with {POOL_SECRET_ENV_PREFIX} "
            "may hold a pool's secret"
        )
    value = os.environ.get(env_name)
    if not value:
        raise PermanentDriverError(f"pool {pool}: environment variable {env_name} ({what}) is not set")
    return value


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do beyond its kind's basics. The services read these and refuse (``NotSupported``)
    a request the provider cannot serve *before* any work starts; a driver implements exactly the methods its
    capabilities promise (``tests/provisioning/test_driver_declarations.py`` holds every driver to it)."""

    point_in_time_restore: bool = False  # the provider itself restores a database to any second of its window
    database_restore: bool = False  # ``restore_database``: a backup restored into a NEW database
    database_switching: bool = False  # calls take ``database=``: an instance can be switched to a restored one
    file_restore: bool = False  # ``restore_share``: a share's content brought back from a files backup
    backup_deletion: bool = False  # ``delete_backup``: retention deletes the hub's backups through the driver
    host_replacement: bool = False  # ``replace_pool``: a failed pool's shares re-associated with a new host
    # Compute: each deployment listens on a port of this machine that the hub allocates (provisioning/ports.py) and
    # passes as ``DeploymentSpec.port``; the instance answers at ``http://<hostname>:<port>/`` (the local runtime).
    host_ports: bool = False


# The declaration every pool driver fills in on its own class (``drivers.registry()`` reads it).
DECLARATION = ("provider", "label", "clouds", "default_for_clouds", "lead_time_hours", "host_config_keys",
               "capabilities")


class PoolDriver:
    """Shared by the pool kinds: a driver is bound to one pool row.

    Each concrete driver declares, on its class, everything the hub must know of its provider (NetBox-backend
    style), so adding a provider is one module here (plus ``cells.choices.Provider`` and a migration, because
    the database's ``pool_provider_matches_kind`` constraint lists providers):

    - ``provider`` / ``label``: the name pools carry in ``Pool.provider`` and how people read it;
    - ``kind``: the pool kind (declared by the kind's base class below);
    - ``clouds``: the clouds whose regions it serves; ``default_for_clouds``: those where it is the provider of
      a reef's first pool of its kind (unless ``CELLHUB["CAPACITY"]["PROVIDER_BY_CLOUD"]`` says otherwise);
    - ``lead_time_hours``: how long a new pool takes to become available (the top-up planner's default);
    - ``host_config_keys``: config keys naming the pool's own resource (its host) — never copied into a new
      pool by a top-up (neither from the template pool nor from ``NEW_POOL_CONFIG``) nor into a replacement;
    - ``capabilities``: a ``Capabilities``.

    Reef isolation: a pool a top-up orders gets a host of its own, never its template's. Each driver says how
    (its ``provision_pool`` creates the host from the pool's id) or, through ``new_host_refusal``, why it cannot in
    a region, so the planner records a shortfall for staff instead of ordering a pool.
    """

    kind: str = ""
    provider: str = ""
    label: str = ""
    clouds: tuple[str, ...] = ()
    default_for_clouds: tuple[str, ...] = ()
    lead_time_hours: float = 0.0
    host_config_keys: tuple[str, ...] = ()
    capabilities: Capabilities = Capabilities()

    def __init__(self, pool: Pool):
        self.pool = pool
        self.config = pool.config or {}

    def pool_capabilities(self) -> Capabilities:
        """What this pool can do: the class's declaration, narrowed where a provider serves some pools less (a
        PostgreSQL pool restores to any second only when it is a cluster the hub runs). Never wider."""
        return self.capabilities

    def backup_checksum(self, *, location: str) -> str:
        """The checksum of the backup stored at ``location`` as it is now, computed as the driver recorded it when
        the backup was made (``BackupResult.checksum``), so the restore plan can compare the two before it uses
        the backup. The default: the SHA-256 of a local ``file://`` backup. Raises ``PermanentDriverError`` when
        the backup is missing or cannot be read."""
        parsed = urlparse(location)
        path = Path(url2pathname(parsed.path)).resolve()
        if parsed.scheme != "file" or not path.is_relative_to(Path(settings.CELLHUB["VAR_DIR"]).resolve()):
            raise PermanentDriverError(f"{location!r} is not a local backup inside the hub's var directory")
        if not path.is_file():
            raise PermanentDriverError(f"backup file {path} is missing")
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    @classmethod
    def new_host_refusal(cls, *, cloud: str) -> str:
        """Why a top-up cannot give a new pool of this provider a host of its own in a region of ``cloud``, or
        ``""`` when it can (the default: ``provision_pool`` creates the pool's resource from its id). Reads nothing
        but the machine: the capacity facts ask it for every reef and kind."""
        return ""

    def derived_config(self) -> dict:
        """Config a NEW pool of this provider gets from its own id (e.g. the name of its resource, where
        ``provision_pool`` does not derive one itself); what the pool's config already holds wins."""
        return {}

    def provision_pool(self) -> dict:
        """Create (or find) the pool's own resource; returns ``{"external_id": ..., "config": {...}}``."""
        raise NotImplementedError

    def delete_pool(self) -> None:
        """Delete the pool's own resource; absent is fine."""
        raise NotImplementedError


class DatabaseDriver(PoolDriver):
    """A database pool: one database and one login per instance, the login allowed on its database only.

    ``database`` (where a method takes it) names the database when it is not the derived one, after a restore
    switched the instance to a new database; only drivers whose ``capabilities.database_switching`` is set are
    ever given one, the others raise ``PermanentDriverError`` (``own_database``).
    """

    kind = "database"

    def database_name(self, instance: Instance) -> str:
        return resource_name("i", instance.pk, separator="_")

    def login_name(self, instance: Instance) -> str:
        return resource_name("i", instance.pk, separator="_") + "_login"

    def password(self, instance: Instance) -> str:
        return derive_secret("database-login", instance.pk)

    def own_database(self, instance: Instance, database: str | None) -> str:
        """The derived database name; raises ``PermanentDriverError`` for another one (a driver that cannot
        switch databases was handed one: the services refuse that before calling)."""
        name = self.database_name(instance)
        if database and database != name:
            raise PermanentDriverError(
                f"{type(self).__name__} works on the derived database {name} only, not {database}"
            )
        return name

    def create_database(self, *, instance: Instance) -> DatabaseCredentials:
        raise NotImplementedError

    def credentials(self, instance: Instance, *, database: str | None = None) -> DatabaseCredentials:
        """How the instance connects to its existing database (``database``, else the derived one). Drivers where
        ``create_database`` is costly compute this without calling the provider."""
        raise NotImplementedError

    def drop_database(self, *, instance: Instance, database: str | None = None, drop_login: bool = True) -> None:
        """Drop the database (``database``, else the derived one) and, with ``drop_login``, the instance's login;
        absent is fine."""
        raise NotImplementedError

    def database_exists(self, *, instance: Instance, database: str | None = None) -> bool:
        raise NotImplementedError

    def list_databases(self) -> list[str]:
        """Names of the hub's databases in this pool (for the reconciler)."""
        raise NotImplementedError

    def backup_database(
        self, *, instance: Instance, label: str, database: str | None = None, archive: bool = False
    ) -> BackupResult:
        """Back the instance's database up; the same ``label`` rewrites (or finds) the same backup.

        ``database``: see the class. ``archive`` (a decommission's final backup, as ``backup_share``'s): the backup
        must outlive the database, which the next step drops; a driver whose backups are kept inside the database's
        own service (Azure SQL's restore points) makes a copy outside it, or refuses. Dump files (PostgreSQL, RDS's S3
        dumps, SQLite copies) outlive it already and ignore the flag. ``BackupResult.extra["taken_at"]`` (ISO 8601),
        when given, is the moment the content is from.
        """
        raise NotImplementedError

    def restore_database(
        self, *, instance: Instance, point_in_time: datetime, new_database: str, source: str = ""
    ) -> str:
        """Restore into a NEW database named ``new_database``; return its name or id. Never overwrites.

        ``source`` is the location of one of this driver's own backups to restore from (drivers that
        keep dumps, the local ones); providers that restore to a point in time natively ignore it.
        Only drivers with ``capabilities.database_restore`` implement it.
        """
        raise NotImplementedError

    def delete_backup(self, *, location: str) -> None:
        """Delete one of this driver's backups (retention); absent is fine. Only drivers with
        ``capabilities.backup_deletion`` implement it."""
        raise NotImplementedError

    def point_in_time_window(
        self, *, instance: Instance, database: str | None = None
    ) -> tuple[datetime | None, datetime | None]:
        """(earliest, latest) second the provider can restore the instance's database to, as far as the provider
        itself knows (None where the hub's own records say: e.g. the oldest base backup); ``database`` as in
        ``backup_database``. Only drivers whose
        ``pool_capabilities().point_in_time_restore`` is set implement it."""
        raise NotImplementedError

    def admit_client(self, *, instance: Instance, address: str) -> None:
        """Let ``address`` (where the instance's compute reaches the database from) through the server's firewall,
        as narrowly as the provider allows; idempotent. Providers without a network firewall of their own (local
        servers, RDS behind its security group set up by staff) do nothing."""

    # Cloud monitoring of the pool's own resource (CPU, storage, connections). Providers without it do nothing.
    def ensure_alarms(self) -> list[str]:
        """Create (or converge) the pool's metric alarms; returns their names. Idempotent."""
        return []

    def delete_alarms(self) -> None:
        """Delete the pool's metric alarms; absent is fine."""

    def alarm_states(self) -> dict[str, str]:
        """Each alarm's name → its state as the provider words it (e.g. ``OK``, ``ALARM``, ``Fired``,
        ``Resolved``); empty when the provider has none. Raises ``DriverError`` when the provider cannot be read."""
        return {}


class StorageDriver(PoolDriver):
    """A storage pool: shares, each backed by its own bucket / file share, firewalled to one address."""

    kind = "storage"

    def create_share(self, *, share: Share) -> str:
        """Create (or find) the share; returns its endpoint."""
        raise NotImplementedError

    def set_firewall(self, *, share: Share, address: str) -> None:
        """Allow ``address`` only (an empty address allows no one)."""
        raise NotImplementedError

    def mount_credentials(self, *, share: Share) -> dict[str, str]:
        """What a pod needs to mount ``share`` (keys as its volume plugin reads them), put in the instance's Secret
        ``<name>-storage``; empty when the share mounts without credentials. Never store the result."""
        return {}

    def share_exists(self, *, share: Share) -> bool:
        raise NotImplementedError

    def delete_share(self, *, share: Share) -> None:
        raise NotImplementedError

    def list_shares(self) -> list[str]:
        raise NotImplementedError

    def archive_share(self, *, share: Share, label: str) -> BackupResult:
        """Zip the share's content to deep storage."""
        raise NotImplementedError

    def backup_share(self, *, share: Share, label: str, archive: bool = False) -> BackupResult:
        """A files backup, encrypted at rest: the share's content zipped; ``archive`` sends it to deep storage.

        The clouds' ``archive_share`` already encrypts with the provider's keys, so it is the default.
        """
        return self.archive_share(share=share, label=label)

    def restore_share(self, *, share: Share, location: str) -> None:
        """Replace the share's content with the backup at ``location`` (made by ``backup_share``). Only drivers
        with ``capabilities.file_restore`` implement it."""
        raise NotImplementedError

    def delete_backup(self, *, location: str) -> None:
        """Delete one of this driver's backups or archives (retention); absent is fine. Only drivers with
        ``capabilities.backup_deletion`` implement it."""
        raise NotImplementedError

    def scrub_share(self, *, share: Share) -> None:
        """Remove every file, leaving the share as a fresh one."""
        raise NotImplementedError

    def replace_pool(self, new_host: str) -> dict:
        """Re-associate every share of this (failed) pool with ``new_host``, the replacement pool's resource (the
        ``external_id`` its ``provision_pool`` returned): the same bucket / file share / folder per share, every
        file kept, the firewall address kept.

        Returns ``{"external_id", "config", "endpoints": {share name: its endpoint on the new host}}``. Safe to
        repeat: a share already re-associated is found. Only drivers with ``capabilities.host_replacement``
        implement it; the others (shares kept inside the pool's own resource) raise ``PermanentDriverError``.
        """
        raise PermanentDriverError(
            f"{type(self).__name__}: the shares of pool {self.pool} cannot be re-associated with another host"
        )


class ComputeDriver(PoolDriver):
    """A compute pool (a Kubernetes cluster or its local stand-in): one deployment per instance."""

    kind = "compute"

    def namespace(self, instance: Instance) -> str:
        return resource_name("i", instance.pk)

    def egress_address(self, *, instance: Instance) -> str:
        """The address the instance's outbound traffic leaves the pool from (its NAT's: what a database server's
        firewall admits)."""
        return self.config.get("egress_address", "127.0.0.1")

    def share_client_address(self, *, instance: Instance) -> str:
        """The one address the instance's share endpoint admits: where its mounted share is reached from (the
        narrowest the platform offers). Default: ``egress_address``. ``TransientDriverError`` while it is not known
        yet (an instance not scheduled)."""
        return self.egress_address(instance=instance)

    def deploy(self, *, spec: DeploymentSpec) -> None:
        raise NotImplementedError

    def delete(self, *, instance: Instance) -> None:
        raise NotImplementedError

    def status(self, *, instance: Instance) -> DeploymentStatus:
        raise NotImplementedError

    def statuses(self, *, instances: Sequence[Instance]) -> dict[int, DeploymentStatus]:
        """The status of each of ``instances`` (instances of this pool), by instance id, in as few calls to the
        provider as it allows: a driver that can list its deployments makes one list call (paged when large). This
        fallback asks ``status`` of each. Raises ``DriverError`` when the pool does not answer (then no status is
        known for any of them)."""
        return {instance.pk: self.status(instance=instance) for instance in instances}

    def share_client_addresses(self, *, instances: Sequence[Instance]) -> dict[int, str]:
        """``share_client_address`` of each of ``instances`` (of this pool), by instance id; an instance whose
        address is not known yet (``DriverError``) is left out. This fallback asks each; a driver that reads the
        address from its provider lists it in one call. Never raises ``DriverError`` for one instance; raises it
        when the pool does not answer at all."""
        addresses = {}
        for instance in instances:
            try:
                addresses[instance.pk] = self.share_client_address(instance=instance)
            except DriverError:
                continue
        return addresses

    def scale(self, *, instance: Instance, replicas: int) -> None:
        raise NotImplementedError

    def set_image(self, *, instance: Instance, image: str) -> None:
        raise NotImplementedError

    def list_deployments(self) -> list[str]:
        raise NotImplementedError


class DnsDriver:
    """The hub's DNS zone: one A (or CNAME) record per instance.

    A concrete driver declares its ``provider`` (the name ``CELLHUB_DNS_PROVIDER`` takes), a ``label``, and the
    clouds whose regions use it unless settings name another (``default_for_clouds``).
    """

    provider: str = ""
    label: str = ""
    default_for_clouds: tuple[str, ...] = ()

    def __init__(self, region: Region, zone: str):
        self.region = region
        self.zone = zone

    def fqdn(self, name: str) -> str:
        return f"{name}.{self.zone}"

    def upsert_record(self, *, name: str, address: str, port: int | None = None) -> None:
        """Point ``name`` at ``address``; idempotent. ``port``, when the instance listens on a port of its own (the
        local runtime), is published where the provider can (an SRV record in the local zone); the clouds' records
        point at an ingress on the standard port and ignore it."""
        raise NotImplementedError

    def delete_record(self, *, name: str) -> None:
        raise NotImplementedError

    def lookup(self, *, name: str) -> str | None:
        raise NotImplementedError

    def list_records(self) -> dict[str, str]:
        raise NotImplementedError
