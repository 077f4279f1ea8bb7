"""Azure SQL as a database pool: a logical server with one elastic pool; one database per instance.

Pool config (no secrets):

- ``subscription_id``, ``resource_group``, ``server`` (the logical server's name), ``elastic_pool``: required;
- ``admin_password_env``: the name of the ``CELLHUB_POOL_SECRET_…`` variable holding the server admin's password
  (required to create the server; the T-SQL step signs in with it too unless ``tsql_auth`` is ``aad``);
  ``admin_login`` (default ``cellhubadmin``);
- ``tsql_auth``: ``sql`` (default when ``admin_password_env`` is set: the server admin login) or ``aad`` (an
  access token for ``https://database.windows.net/`` from azure-identity's credential chain; the hub's identity
  must then be the server's Microsoft Entra admin);
- ``ca_file``: the CA bundle that verifies the server's TLS certificate (default: certifi's);
- ``location`` (default: the region's location), ``elastic_pool_sku`` (default
  ``{"name": "StandardPool", "tier": "Standard", "capacity": 100}``);
- ``hub_address``: the hub's public address, allowed through the server firewall for the T-SQL step;
- ``backup_retention_days``: the point-in-time restore window Azure keeps per database (1-35; default the hub's
  ``BACKUP_RETENTION_DAYS``, clamped);
- ``restore_lag_seconds``: how far behind now the newest restorable moment is taken to be (default 600: Azure takes
  a log backup every 5-10 minutes); ``restore_wait_seconds`` (default 480): how long a restore to a newer moment (an
  upgrade's rollback) waits for it before the step is retried;
- ``long_term_retention``: ARM properties of the long-term retention policy applied on each backup,
  e.g. ``{"weeklyRetention": "P4W", "monthlyRetention": "P12M", "yearlyRetention": "P5Y", "weekOfYear": 1}``;
- ``alerts`` (default ``DEFAULT_ALERTS``): the Azure Monitor metric alerts on the elastic pool, metric → percent;
- ``archive_account`` (the deep-storage account a decommission's final backup is exported to),
  ``archive_resource_group`` (default ``resource_group``), ``archive_container`` (default ``<prefix>-archive``, the
  container the Azure Files archives use too); ``export_wait_seconds`` (default 480): how long one attempt waits for
  the export before the step is retried.

The ARM side (server, elastic pool, databases, retention, point-in-time restore, firewall) goes through
azure-mgmt-sql, the alerts through azure-mgmt-monitor. The instance's login is a *contained* database user
(it exists in its database only, so it can open no other): Azure has no management API for that, so it is
created over TDS with ``python-tds`` (pure Python, TLS through pyOpenSSL), signed in as the server admin or with
an Entra access token.

Backups: Azure backs every database up by itself (full, differential and log backups every few minutes) and
restores any second of the retention window into a new database (``createMode: PointInTimeRestore``). So an
on-demand backup is a *restore point*: the moment, recorded against the database's own identity (its
``databaseId``), which the restore checks before it uses it. A BACPAC export was considered for these and not
taken: it is not transactionally consistent unless made from a copy, takes minutes to hours, and cannot be restored
to a point in time. Retention is Azure's (the short-term policy set on every database); deleting an expired restore
point deletes only the hub's record of it.

The one exception is a decommission's final backup (``backup_database(archive=True)``): the next step drops the
database, and Azure keeps a dropped database's backups at most 35 days, fewer than the hub keeps an archive. So it is
a BACPAC export (``databases.begin_export``, the storage account key from ``listKeys``) to
``<archive container>/<label>.bacpac`` in the ``archive_account``; compute is stopped by then, so nothing writes
while it runs. Its ``checksum`` is the SHA-256 of the blob's bytes (read through azure-storage-blob), retention deletes
the blob. Without ``archive_account`` the final backup is refused (``PermanentDriverError``) before anything is
called, so the database is never dropped with only a restore point behind it.
"""
from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

from azure.mgmt.monitor import MonitorManagementClient
from azure.mgmt.monitor.models import (
    MetricAlertResource,
    MetricAlertSingleResourceMultipleMetricCriteria,
    MetricCriteria,
)
from azure.mgmt.sql import SqlManagementClient
from azure.mgmt.sql.models import (
    BackupShortTermRetentionPolicy,
    Database,
    ElasticPool,
    ExportDatabaseDefinition,
    FirewallRule,
    LongTermRetentionPolicy,
    Server,
    Sku,
)
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import BlobContainer
from azure.storage.blob import BlobClient
from django.conf import settings
from django.utils.dateparse import parse_datetime

from cells.choices import InstanceState
from cells.models import Instance
from provisioning.drivers.base import (
    BackupResult,
    Capabilities,
    DatabaseCredentials,
    DatabaseDriver,
    PermanentDriverError,
    TransientDriverError,
    resource_name,
    resource_prefix,
    secret_from_environment,
)
from provisioning.drivers.cloud_retry import (
    CloudConflictError,
    CloudNotFoundError,
    azure_client,
    cloud_call,
    require_config,
)

REQUIRED_CONFIG = ("subscription_id", "resource_group", "server", "elastic_pool")
DEFAULT_SKU = {"name": "StandardPool", "tier": "Standard", "capacity": 100}
SQL_PORT = 1433
SQL_TOKEN_SCOPE = "https://database.windows.net/.default"
# One attempt of a final backup waits this long for its BACPAC export, then the step is retried (it finds the blob).
EXPORT_WAIT_SECONDS = 480.0
# Azure SQL takes a log backup every 5-10 minutes: a point newer than this may not be restorable yet.
RESTORE_LAG = timedelta(minutes=10)
# The elastic pool's metrics (Microsoft.Sql/servers/elasticPools): alert above these percentages.
DEFAULT_ALERTS = {"cpu_percent": 80, "storage_percent": 85, "sessions_percent": 80}
# The roles a contained user gets: read, write and change the schema of its own database; no server rights,
# no permission management (db_owner could grant itself more and drop the database).
USER_ROLES = ("db_datareader", "db_datawriter", "db_ddladmin")


def _bracket(name: str) -> str:
    """A T-SQL quoted identifier."""
    return "[" + name.replace("]", "]]") + "]"


def _nstring(value: str) -> str:
    """A T-SQL Unicode string literal."""
    return "N'" + value.replace("'", "''") + "'"


def contained_user_statements(*, login: str, password: str) -> list[str]:
    """T-SQL run inside the instance's database: its contained user (created, or its password re-applied), member
    of ``USER_ROLES`` of that database and of nothing else (no server login, no server role). Each string is one
    batch; all are safe to repeat."""
    user = _bracket(login)
    return [
        f"IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = {_nstring(login)})\n"
        f"    CREATE USER {user} WITH PASSWORD = {_nstring(password)};\n"
        f"ELSE\n"
        f"    ALTER USER {user} WITH PASSWORD = {_nstring(password)};",
        *(f"ALTER ROLE {role} ADD MEMBER {user};" for role in USER_ROLES),
    ]


def restore_point(location: str) -> tuple[str, datetime, str]:
    """(database resource id, moment, databaseId) of a restore point made by ``backup_database``.

    Raises ``PermanentDriverError`` for a location that is not one."""
    parsed = urlparse(location)
    query = parse_qs(parsed.query)
    moment = parse_datetime((query.get("restorePointInTime") or [""])[0].replace(" ", "+"))
    if not parsed.path.startswith("/subscriptions/") or moment is None:
        raise PermanentDriverError(f"{location!r} is not an Azure SQL restore point")
    return parsed.path, moment, (query.get("databaseId") or [""])[0]


class AzureSqlDatabaseDriver(DatabaseDriver):
    """Databases in one elastic pool of one Azure SQL logical server; every ARM call through ``cloud_call``."""

    provider = "azure_sql"
    label = "Azure SQL elastic pool"
    clouds = ("azure",)
    default_for_clouds = ("azure",)
    lead_time_hours = 1.0
    host_config_keys = ("elastic_pool",)
    # Azure restores any second of its window natively, into a new database in the same elastic pool; restore
    # points are records (Azure keeps and expires the backups), so deleting one is the hub forgetting it.
    capabilities = Capabilities(
        point_in_time_restore=True, database_restore=True, database_switching=True, backup_deletion=True
    )

    def __init__(self, pool, *, credential=None, transport=None, polling_interval=None):
        super().__init__(pool)
        self._credential, self._transport, self._polling_interval = credential, transport, polling_interval
        self._client: SqlManagementClient | None = None
        self._monitor: MonitorManagementClient | None = None
        self._storage: StorageManagementClient | None = None

    # -- configuration --------------------------------------------------------------------
    @property
    def required(self) -> dict:
        """The required config values; raises ``PermanentDriverError`` naming every missing one."""
        return require_config(self.config, REQUIRED_CONFIG, where=f"Azure SQL pool {self.pool}")

    @property
    def location(self) -> str:
        location = self.config.get("location") or self.pool.reef.region.location
        if not location:
            raise PermanentDriverError(f"Azure SQL pool {self.pool}: no location (config 'location' or region)")
        return location

    def _azure_client(self, client_class):
        return azure_client(
            client_class,
            self.required["subscription_id"],
            credential=self._credential,
            transport=self._transport,
            polling_interval=self._polling_interval,
        )

    @property
    def client(self) -> SqlManagementClient:
        if self._client is None:
            self._client = self._azure_client(SqlManagementClient)
        return self._client

    @property
    def monitor(self) -> MonitorManagementClient:
        if self._monitor is None:
            self._monitor = self._azure_client(MonitorManagementClient)
        return self._monitor

    @property
    def storage(self) -> StorageManagementClient:
        if self._storage is None:
            self._storage = self._azure_client(StorageManagementClient)
        return self._storage

    def _data_credential(self):
        """The credential of blob data-plane calls: the injected one, else ``DefaultAzureCredential``."""
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    def _server_id(self) -> str:
        s = self.required
        return (
            f"/subscriptions/{s['subscription_id']}/resourceGroups/{s['resource_group']}"
            f"/providers/Microsoft.Sql/servers/{s['server']}"
        )

    def elastic_pool_id(self) -> str:
        return f"{self._server_id()}/elasticPools/{self.required['elastic_pool']}"

    def _admin_login(self) -> str:
        return self.config.get("admin_login", "cellhubadmin")

    def _admin_password(self) -> str:
        return secret_from_environment(self.pool, "admin_password_env", what="the server admin password")

    def _host(self) -> str:
        return self.config.get("server_fqdn") or f"{self.required['server']}.database.windows.net"

    def _restore_lag(self) -> timedelta:
        """How far behind now the newest restorable moment is taken to be (config ``restore_lag_seconds``)."""
        seconds = self.config.get("restore_lag_seconds")
        return RESTORE_LAG if seconds is None else timedelta(seconds=float(seconds))

    def _wait_restorable(self, point_in_time: datetime) -> None:
        """Return once ``point_in_time`` is older than the restore lag (a rollback asks for a second of a minute ago,
        which Azure restores only once a log backup holds it); waits at most ``restore_wait_seconds``, then raises
        ``TransientDriverError`` (the step is retried)."""
        ready_at = point_in_time + self._restore_lag()
        wait = (ready_at - datetime.now(UTC)).total_seconds()
        if wait <= 0:
            return
        longest = float(self.config.get("restore_wait_seconds", 480))
        time.sleep(min(wait, longest))
        if wait > longest:
            raise TransientDriverError(
                f"Azure SQL restores {point_in_time:%Y-%m-%d %H:%M:%S} UTC from {ready_at:%H:%M:%S} UTC on (its log "
                "backups run behind): not yet"
            )

    def _retention_days(self) -> int:
        days = int(self.config.get("backup_retention_days") or settings.CELLHUB["BACKUP_RETENTION_DAYS"])
        return max(1, min(35, days))

    # -- pool -----------------------------------------------------------------------------
    def provision_pool(self) -> dict:
        """Create or update the logical server, its elastic pool and (if ``hub_address``) the hub's firewall rule.

        Every call is an ARM PUT, so a repeat converges on the same resources (and re-applies the admin
        password from the environment). Returns the elastic pool's id and the server's host name.
        """
        s, location = self.required, self.location
        server = cloud_call(
            f"create Azure SQL server {s['server']}",
            lambda: self.client.servers.begin_create_or_update(
                s["resource_group"],
                s["server"],
                Server(
                    location=location,
                    administrator_login=self._admin_login(),
                    administrator_login_password=self._admin_password(),
                    version="12.0",
                    minimal_tls_version="1.2",
                ),
            ).result(),
        )
        if self.config.get("hub_address"):
            address = self.config["hub_address"]
            cloud_call(
                f"allow the hub through the firewall of Azure SQL server {s['server']}",
                lambda: self.client.firewall_rules.create_or_update(
                    s["resource_group"],
                    s["server"],
                    f"{resource_prefix()}-hub",
                    FirewallRule(start_ip_address=address, end_ip_address=address),
                ),
            )
        sku = self.config.get("elastic_pool_sku") or DEFAULT_SKU
        elastic_pool = cloud_call(
            f"create elastic pool {s['elastic_pool']} on {s['server']}",
            lambda: self.client.elastic_pools.begin_create_or_update(
                s["resource_group"], s["server"], s["elastic_pool"], ElasticPool(location=location, sku=Sku(**sku))
            ).result(),
        )
        return {
            "external_id": elastic_pool.id or self.elastic_pool_id(),
            "config": {"server_fqdn": server.fully_qualified_domain_name or self._host()},
        }

    def delete_pool(self) -> None:
        """Delete the elastic pool, then the server if it holds no other elastic pool and no database but
        ``master`` (a new pool shares its reef's server: a failed top-up must never take the other pools with it);
        absent is fine.

        Azure refuses to delete an elastic pool that still holds databases: that refusal surfaces as
        ``PermanentDriverError`` rather than anything being lost.
        """
        s = self.required
        try:
            cloud_call(
                f"delete elastic pool {s['elastic_pool']}",
                lambda: self.client.elastic_pools.begin_delete(
                    s["resource_group"], s["server"], s["elastic_pool"]
                ).result(),
            )
        except CloudNotFoundError:
            pass
        try:
            others = cloud_call(
                f"list elastic pools of {s['server']}",
                lambda: [p.name for p in self.client.elastic_pools.list_by_server(s["resource_group"], s["server"])],
            )
            names = cloud_call(
                f"list databases of {s['server']}",
                lambda: [d.name for d in self.client.databases.list_by_server(s["resource_group"], s["server"])],
            )
        except CloudNotFoundError:
            return
        if set(others) - {s["elastic_pool"]} or set(names) - {"master"}:
            return
        try:
            cloud_call(
                f"delete Azure SQL server {s['server']}",
                lambda: self.client.servers.begin_delete(s["resource_group"], s["server"]).result(),
            )
        except CloudNotFoundError:
            pass

    # -- databases ------------------------------------------------------------------------
    def derived_config(self) -> dict:
        """A new pool's elastic pool is named after the pool's id."""
        return {"elastic_pool": resource_name("p", self.pool.pk)}

    def switchable_database(self, instance, database: str | None) -> str:
        """``database`` if it is one of the instance's (the derived name, or a restore's ``<derived>_r<id>``), else
        the derived one; raises ``PermanentDriverError`` for another instance's database."""
        derived = self.database_name(instance)
        if not database or database == derived:
            return derived
        if not database.startswith(f"{derived}_r"):
            raise PermanentDriverError(f"database {database} is not one of instance {instance}'s databases")
        return database

    def credentials(self, instance, *, database: str | None = None) -> DatabaseCredentials:
        """The contained user is created in every database of the instance under the same name and password, so a
        restored database is reached with the same login."""
        database = self.switchable_database(instance, database)
        login, password = self.login_name(instance), self.password(instance)
        host = self._host()
        return DatabaseCredentials(
            database=database,
            login=login,
            password=password,
            host=host,
            port=SQL_PORT,
            url=f"mssql://{login}:{password}@{host}:{SQL_PORT}/{database}?encrypt=true",
        )

    def _set_short_term_retention(self, database: str) -> None:
        s = self.required
        cloud_call(
            f"set the point-in-time restore window of {database}",
            lambda: self.client.backup_short_term_retention_policies.begin_create_or_update(
                s["resource_group"], s["server"], database, "default",
                BackupShortTermRetentionPolicy(retention_days=self._retention_days()),
            ).result(),
        )

    def create_database(self, *, instance) -> DatabaseCredentials:
        """Create (or update) the database in the elastic pool, set its restore window, then create its contained
        user over TDS.

        Safe to repeat: the ARM PUTs converge, the T-SQL creates the user or re-applies its password. Raises
        ``TransientDriverError`` when the server cannot be reached over TDS (the database exists by then; a retry
        finishes the user).
        """
        s, database = self.required, self.database_name(instance)
        cloud_call(
            f"create Azure SQL database {database}",
            lambda: self.client.databases.begin_create_or_update(
                s["resource_group"],
                s["server"],
                database,
                Database(
                    location=self.location,
                    elastic_pool_id=self.elastic_pool_id(),
                    tags={"cellhub-instance": str(instance.pk)},
                ),
            ).result(),
        )
        self._set_short_term_retention(database)
        self._create_user(instance, database)
        return self.credentials(instance)

    def _create_user(self, instance, database: str) -> None:
        self.run_tsql(
            database=database,
            statements=contained_user_statements(login=self.login_name(instance), password=self.password(instance)),
        )

    def _tsql_auth(self) -> str:
        auth = self.config.get("tsql_auth") or ("sql" if self.config.get("admin_password_env") else "aad")
        if auth not in ("sql", "aad"):
            raise PermanentDriverError(f"Azure SQL pool {self.pool}: tsql_auth must be 'sql' or 'aad', not {auth!r}")
        return auth

    def _access_token(self) -> str:
        """An Entra access token for Azure SQL from the injected credential, else ``DefaultAzureCredential``."""
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        token = cloud_call("get an access token for Azure SQL", lambda: self._credential.get_token(SQL_TOKEN_SCOPE))
        return token.token

    def connect_arguments(self, database: str) -> dict:
        """The ``pytds.connect`` arguments: TLS verified against ``ca_file`` (certifi's bundle by default), and the
        admin login's password or an Entra access token (``tsql_auth``)."""
        import certifi

        arguments = {
            "server": self._host(),
            "port": SQL_PORT,
            "database": database,
            "autocommit": True,
            "login_timeout": 30,
            "timeout": 120,
            "cafile": self.config.get("ca_file") or certifi.where(),
            "validate_host": True,
            "appname": "cellhub",
        }
        if self._tsql_auth() == "sql":
            arguments.update(user=self._admin_login(), password=self._admin_password())
        else:
            arguments["access_token_callable"] = self._access_token
        return arguments

    def run_tsql(self, *, database: str, statements: list[str]) -> None:
        """Run ``statements`` (one batch each) in ``database`` over TDS (python-tds).

        Raises ``TransientDriverError`` when the server cannot be reached or drops the connection,
        ``PermanentDriverError`` when it refuses a statement or the sign-in.
        """
        import pytds

        try:
            with pytds.connect(**self.connect_arguments(database)) as connection:
                with connection.cursor() as cursor:
                    for statement in statements:
                        cursor.execute(statement)
        except (pytds.OperationalError, pytds.InterfaceError, OSError) as error:
            raise TransientDriverError(f"Azure SQL database {database}: cannot connect ({error})") from error
        except pytds.Error as error:
            raise PermanentDriverError(f"Azure SQL database {database}: T-SQL failed ({error})") from error

    def _firewall_rule_name(self, compute_pool_id: int) -> str:
        return f"{resource_prefix()}-compute-p{compute_pool_id}"

    def admit_client(self, *, instance, address: str) -> None:
        """A server firewall rule for the instance's compute pool (its egress address, one address wide).

        Azure SQL's firewall is per server and counts addresses, not pods: every pod of an AKS cluster leaves
        through the cluster's outbound address, so one rule per compute pool is the narrowest there is (the
        contained user keeps instances apart). Idempotent (an ARM PUT of a rule named after the compute pool)."""
        if not address or instance.compute_pool_id is None:
            return
        s = self.required
        cloud_call(
            f"allow compute pool {instance.compute_pool_id} through the firewall of {s['server']}",
            lambda: self.client.firewall_rules.create_or_update(
                s["resource_group"], s["server"], self._firewall_rule_name(instance.compute_pool_id),
                FirewallRule(start_ip_address=address, end_ip_address=address),
            ),
        )

    def _release_client(self, instance) -> None:
        """Remove the compute pool's firewall rule when no other live instance of this pool runs on it."""
        if instance.compute_pool_id is None:
            return
        others = (
            Instance.objects.filter(database_pool_id=self.pool.pk, compute_pool_id=instance.compute_pool_id)
            .exclude(pk=instance.pk)
            .exclude(state__in=[InstanceState.DECOMMISSIONED, InstanceState.FAILED])
        )
        if others.exists():
            return
        s = self.required
        try:
            cloud_call(
                f"remove compute pool {instance.compute_pool_id} from the firewall of {s['server']}",
                lambda: self.client.firewall_rules.delete(
                    s["resource_group"], s["server"], self._firewall_rule_name(instance.compute_pool_id)
                ),
            )
        except CloudNotFoundError:
            pass

    def drop_database(self, *, instance, database: str | None = None, drop_login: bool = True) -> None:
        """Delete the database (its contained user goes with it); with ``drop_login`` also the compute pool's
        firewall rule once no other instance needs it. Absent is fine."""
        s, database = self.required, self.switchable_database(instance, database)
        try:
            cloud_call(
                f"delete Azure SQL database {database}",
                lambda: self.client.databases.begin_delete(s["resource_group"], s["server"], database).result(),
            )
        except CloudNotFoundError:
            pass
        if drop_login:
            self._release_client(instance)

    def _get_database(self, name: str):
        s = self.required
        return cloud_call(
            f"read Azure SQL database {name}",
            lambda: self.client.databases.get(s["resource_group"], s["server"], name),
        )

    def database_exists(self, *, instance, database: str | None = None) -> bool:
        try:
            self._get_database(self.switchable_database(instance, database))
        except CloudNotFoundError:
            return False
        return True

    def list_databases(self) -> list[str]:
        """The hub's databases in the elastic pool (names that start with the resource prefix)."""
        s = self.required
        names = cloud_call(
            f"list databases of elastic pool {s['elastic_pool']}",
            lambda: [
                d.name
                for d in self.client.databases.list_by_elastic_pool(s["resource_group"], s["server"], s["elastic_pool"])
            ],
        )
        return sorted(name for name in names if name.startswith(f"{resource_prefix()}_i"))

    # -- backups and restores -------------------------------------------------------------
    def backup_database(
        self, *, instance, label: str, database: str | None = None, archive: bool = False
    ) -> BackupResult:
        """A restore point of the instance's current database: now, recorded against the database's identity
        (``databaseId``), after re-applying its restore window and (if configured) the long-term retention policy.

        ``checksum`` is that identity: a restore refuses a point whose database was replaced since. ``size_bytes``
        is 0: Azure keeps the backups and reports no size per point.

        With ``archive`` (a decommission's final backup, which must outlive the database) a BACPAC export to the
        archive account instead (``export_database``).
        """
        if archive:
            return self.export_database(instance=instance, label=label, database=database)
        s, database = self.required, self.switchable_database(instance, database)
        found = self._get_database(database)
        if not found.database_id:
            raise TransientDriverError(f"Azure SQL database {database} reports no databaseId yet")
        self._set_short_term_retention(database)
        extra = {"label": label, "earliest_restore_date": _iso(found.earliest_restore_date)}
        retention = self.config.get("long_term_retention")
        if retention:
            policy = cloud_call(
                f"set long-term retention of {database}",
                lambda: self.client.long_term_retention_policies.begin_create_or_update(
                    s["resource_group"], s["server"], database, "default",
                    LongTermRetentionPolicy({"properties": retention}),
                ).result(),
            )
            extra["long_term_retention"] = dict(retention)
            extra["long_term_retention_policy_id"] = policy.id or ""
        taken_at = datetime.now(UTC).replace(microsecond=0)
        database_id = f"{self._server_id()}/databases/{database}"
        extra["taken_at"] = taken_at.isoformat()
        return BackupResult(
            location=f"{database_id}?restorePointInTime={taken_at:%Y-%m-%dT%H:%M:%SZ}&databaseId={found.database_id}",
            size_bytes=0,
            checksum=found.database_id,
            encrypted_with="Azure SQL transparent data encryption",
            extra=extra,
        )

    def delete_backup(self, *, location: str) -> None:
        """A BACPAC export's blob is deleted (absent is fine). A restore point holds nothing of its own (Azure's
        retention expires the backups behind it): nothing is called; the location is checked to be one of this
        driver's. Raises ``PermanentDriverError`` otherwise."""
        if _is_blob(location):
            blob = self._archive_blob(location)
            try:
                cloud_call(f"delete BACPAC {blob.blob_name}", blob.delete_blob)
            except CloudNotFoundError:
                pass
            return
        restore_point(location)

    def point_in_time_window(self, *, instance, database: str | None = None) -> tuple[datetime | None, datetime | None]:
        """(the database's earliest restore date, now less the restore lag) as Azure reports it; (None, None) while
        the database has no backup yet. Raises ``DriverError`` when Azure cannot be read."""
        found = self._get_database(self.switchable_database(instance, database))
        if found.earliest_restore_date is None:
            return None, None
        latest = datetime.now(UTC).replace(microsecond=0) - self._restore_lag()
        return found.earliest_restore_date, max(latest, found.earliest_restore_date)

    def backup_checksum(self, *, location: str) -> str:
        """The ``databaseId`` of the database a restore point was recorded against, as Azure reports it now (what
        ``backup_database`` recorded as the checksum): a database dropped and created again under the same name has
        another. Raises ``PermanentDriverError`` when the database is gone or the location is no restore point.

        For a BACPAC export: the SHA-256 of the blob's bytes as stored now (``PermanentDriverError`` when it is gone).
        """
        if _is_blob(location):
            blob = self._archive_blob(location)
            try:
                return self._blob_sha256(blob)
            except CloudNotFoundError:
                raise PermanentDriverError(f"the BACPAC export {location} no longer exists") from None
        source_id, _, _ = restore_point(location)
        try:
            found = self._get_database(source_id.rsplit("/", 1)[-1])
        except CloudNotFoundError:
            raise PermanentDriverError(f"the database of restore point {location} no longer exists") from None
        return found.database_id or ""

    # -- BACPAC export (a decommission's final backup) ------------------------------------------
    def archive_container(self) -> tuple[str, str, str]:
        """(resource group, account, container) of the deep storage; ``PermanentDriverError`` when the pool has no
        ``archive_account`` (a final backup is then refused: it must outlive the database)."""
        account = self.config.get("archive_account")
        if not account:
            raise PermanentDriverError(
                f"Azure SQL pool {self.pool}: config is missing archive_account, the storage account a final backup "
                "is exported to (a restore point does not outlive the dropped database); nothing was dropped"
            )
        group = self.config.get("archive_resource_group") or self.required["resource_group"]
        return group, account, self.config.get("archive_container") or f"{resource_prefix()}-archive"

    def _archive_blob(self, location: str) -> BlobClient:
        """The blob of one of this pool's exports; ``PermanentDriverError`` for a URL outside its archive container."""
        _, account, container = self.archive_container()
        parsed = urlparse(location)
        container_path, _, blob_name = parsed.path.lstrip("/").partition("/")
        if parsed.hostname != f"{account}.blob.core.windows.net" or container_path != container or not blob_name:
            raise PermanentDriverError(f"{location} is not in this pool's archive container")
        return BlobClient(
            account_url=f"https://{account}.blob.core.windows.net", container_name=container, blob_name=blob_name,
            credential=self._data_credential(), retry_total=0,
            **({"transport": self._transport} if self._transport is not None else {}),
        )

    def _blob_sha256(self, blob: BlobClient) -> str:
        def digest():
            sha = _Sha256Writer()
            blob.download_blob().readinto(sha)  # streamed: a BACPAC may be large
            return sha.hexdigest()

        return cloud_call(f"read BACPAC {blob.blob_name}", digest)

    def _ensure_archive_container(self) -> str:
        """Create the private archive container (or find it); returns its URL."""
        group, account, container = self.archive_container()
        try:
            cloud_call(f"read archive container {container}",
                       lambda: self.storage.blob_containers.get(group, account, container))
        except CloudNotFoundError:
            try:
                cloud_call(
                    f"create archive container {container} in {account}",
                    lambda: self.storage.blob_containers.create(group, account, container,
                                                                BlobContainer(public_access="None")),
                )
            except CloudConflictError:
                pass
        return f"https://{account}.blob.core.windows.net/{container}"

    def export_database(self, *, instance, label: str, database: str | None = None) -> BackupResult:
        """Export the database as a BACPAC to ``<archive container>/<label>.bacpac`` and wait for it.

        Refused (``PermanentDriverError``) before any call without ``archive_account`` or the admin password (the
        export signs in as the server admin). A blob already there under the label (an earlier attempt's export
        that finished after it stopped waiting) is used as is; otherwise the export runs, at most
        ``export_wait_seconds`` per attempt (then ``TransientDriverError``: the step is retried and finds the blob,
        or Azure's answer that an export is still under way). An export that fails leaves no blob behind.
        ``checksum`` is the SHA-256 of the blob's bytes; the admin password is in the request only, never in the
        result."""
        s, database = self.required, self.switchable_database(instance, database)
        group, account, _ = self.archive_container()
        password = self._admin_password()
        container_url = self._ensure_archive_container()
        location = f"{container_url}/{label}.bacpac"
        blob = self._archive_blob(location)
        try:
            properties = cloud_call(f"read BACPAC {blob.blob_name}", blob.get_blob_properties)
        except CloudNotFoundError:
            properties = None
        if properties is None:
            keys = cloud_call(f"list the keys of storage account {account}",
                              lambda: self.storage.storage_accounts.list_keys(group, account))
            # ``keys`` is also a Mapping method on the SDK's models: read the field by its wire name.
            key = next((k.get("value") for k in (keys.get("keys") or []) if k.get("value")), None)
            if not key:
                raise PermanentDriverError(f"storage account {account} answered no access key")
            definition = ExportDatabaseDefinition(
                storage_key_type="StorageAccessKey", storage_key=key, storage_uri=location,
                administrator_login=self._admin_login(), administrator_login_password=password,
                authentication_type="Sql",
            )
            try:
                poller = cloud_call(
                    f"export Azure SQL database {database} to {location}",
                    lambda: self.client.databases.begin_export(s["resource_group"], s["server"], database, definition),
                )
            except CloudConflictError as error:
                raise TransientDriverError(f"an export of {database} is still under way ({error})") from error
            wait = float(self.config.get("export_wait_seconds", EXPORT_WAIT_SECONDS))
            try:
                cloud_call(f"wait for the export of {database}", lambda: poller.wait(timeout=wait))
                if poller.done():
                    cloud_call(f"read the export of {database}", poller.result)
            except PermanentDriverError:
                try:  # a failed export leaves nothing behind: a later attempt starts clean
                    cloud_call(f"delete BACPAC {blob.blob_name}", blob.delete_blob)
                except CloudNotFoundError:
                    pass
                raise
            if not poller.done():
                raise TransientDriverError(
                    f"the export of {database} to {location} is still running after {wait:.0f}s; retry later"
                )
            properties = cloud_call(f"read BACPAC {blob.blob_name}", blob.get_blob_properties)
        return BackupResult(
            location=location,
            size_bytes=int(properties.size or 0),
            checksum=self._blob_sha256(blob),
            encrypted_with="Azure Storage service-side encryption",
            extra={"label": label, "format": "bacpac", "database": database, "archive_account": account},
        )

    def restore_database(self, *, instance, point_in_time: datetime, new_database: str, source: str = "") -> str:
        """Restore the database ``source`` names (``?database=<name>``, or one of this driver's restore points; the
        derived one when empty), as it was at ``point_in_time``, into the
        NEW database ``new_database`` in the same elastic pool (createMode ``PointInTimeRestore``), then create the
        instance's contained user in it. If ``new_database`` exists already (a repeated call) only the user is
        re-applied; the source is never written to.

        Before anything is created: the source database must still be the one the point was recorded against
        (its ``databaseId``) and ``point_in_time`` inside its window; else ``PermanentDriverError``. A moment newer than
        the restore lag (a rollback's) is waited for (``TransientDriverError`` when that takes too long).
        """
        s = self.required
        new_database = self.switchable_database(instance, new_database)
        named = parse_qs(urlparse(source).query).get("database") if source.startswith("?") else None
        if named:  # the restore plan names the database the instance used at that time (Azure keeps the backups)
            source_name, database_id = named[0], ""
        elif source:
            source_id, _, database_id = restore_point(source)
            source_name = source_id.rsplit("/", 1)[-1]
        else:
            source_name, database_id = self.database_name(instance), ""
        source_name = self.switchable_database(instance, source_name)
        if new_database == source_name:
            raise PermanentDriverError(f"restore of {source_name} must go to a new database, not onto itself")
        try:
            self._get_database(new_database)
        except CloudNotFoundError:
            found = self._get_database(source_name)
            if database_id and found.database_id != database_id:
                raise PermanentDriverError(
                    f"database {source_name} is no longer the one the restore point was recorded for "
                    f"(databaseId {found.database_id}, not {database_id}); the restore is refused"
                ) from None
            earliest = found.earliest_restore_date
            if earliest is not None and point_in_time < earliest:
                raise PermanentDriverError(
                    f"{point_in_time.isoformat()} is before the earliest restorable moment of {source_name} "
                    f"({earliest.isoformat()})"
                ) from None
            self._wait_restorable(point_in_time)
            cloud_call(
                f"restore Azure SQL database {source_name} to {new_database}",
                lambda: self.client.databases.begin_create_or_update(
                    s["resource_group"],
                    s["server"],
                    new_database,
                    Database(
                        location=self.location,
                        create_mode="PointInTimeRestore",
                        source_database_id=f"{self._server_id()}/databases/{source_name}",
                        restore_point_in_time=point_in_time,
                        elastic_pool_id=self.elastic_pool_id(),
                        tags={"cellhub-instance": str(instance.pk), "cellhub-restored-from": source_name},
                    ),
                ).result(),
            )
            self._set_short_term_retention(new_database)
        self._create_user(instance, new_database)
        return new_database

    # -- monitoring -----------------------------------------------------------------------
    def _alert_name(self, metric: str) -> str:
        return f"{resource_prefix()}-p{self.pool.pk}-{metric.replace('_', '-')}"

    def _alerts(self) -> dict:
        return self.config.get("alerts") or DEFAULT_ALERTS

    def ensure_alarms(self) -> list[str]:
        """One Azure Monitor metric alert per ``alerts`` metric on the elastic pool (average over 5 minutes above
        the percentage, evaluated every minute, resolved by itself); an ARM PUT each, so a repeat converges."""
        s, names = self.required, []
        for metric, threshold in sorted(self._alerts().items()):
            name = self._alert_name(metric)
            alert = MetricAlertResource(
                location="global",
                description=f"Cell Hub: {metric} of elastic pool {s['elastic_pool']} above {threshold}%",
                severity=2,
                enabled=True,
                scopes=[self.elastic_pool_id()],
                evaluation_frequency=timedelta(minutes=1),
                window_size=timedelta(minutes=5),
                target_resource_type="Microsoft.Sql/servers/elasticPools",
                criteria=MetricAlertSingleResourceMultipleMetricCriteria(all_of=[MetricCriteria(
                    name=metric, metric_name=metric, time_aggregation="Average", operator="GreaterThan",
                    threshold=float(threshold),
                )]),
                auto_mitigate=True,
                tags={"cellhub-pool": str(self.pool.pk)},
            )
            cloud_call(
                f"create metric alert {name}",
                lambda name=name, alert=alert: self.monitor.metric_alerts.create_or_update(
                    s["resource_group"], name, alert
                ),
            )
            names.append(name)
        return names

    def delete_alarms(self) -> None:
        """Delete the pool's metric alerts; absent is fine."""
        s = self.required
        for metric in sorted(self._alerts()):
            name = self._alert_name(metric)
            try:
                cloud_call(
                    f"delete metric alert {name}",
                    lambda name=name: self.monitor.metric_alerts.delete(s["resource_group"], name),
                )
            except CloudNotFoundError:
                pass

    def alarm_states(self) -> dict[str, str]:
        """Each alert's latest status as Azure Monitor reports it (``Healthy``, ``Unhealthy``…); ``missing`` for an
        alert that does not exist, ``no data`` before its first evaluation."""
        s, states = self.required, {}
        for metric in sorted(self._alerts()):
            name = self._alert_name(metric)
            try:
                found = cloud_call(
                    f"read the status of metric alert {name}",
                    lambda name=name: self.monitor.metric_alerts_status.list(s["resource_group"], name),
                )
            except CloudNotFoundError:
                states[name] = "missing"
                continue
            items = [item for item in (found.value or []) if item.properties is not None]
            latest = max(items, key=lambda item: item.properties.timestamp or datetime.min.replace(tzinfo=UTC),
                         default=None)
            states[name] = (latest.properties.status or "no data") if latest else "no data"
        return states


class _Sha256Writer:
    """A write-only stream that keeps the SHA-256 of what is written to it."""

    def __init__(self):
        self._sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._sha.update(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _is_blob(location: str) -> bool:
    """A BACPAC export's location (a blob URL), as opposed to a restore point's (an ARM path)."""
    return (urlparse(location).hostname or "").endswith(".blob.core.windows.net")


def _iso(moment) -> str:
    return moment.isoformat() if moment else ""
