"""Azure SQL as a database pool: a logical server with one elastic pool; one database per instance.

Pool config (no secrets):

- ``subscription_id``, ``resource_group``, ``server`` (the logical server's name), ``elastic_pool``: required;
- ``admin_password_env``: the name of the ``CELLHUB_POOL_SECRET_…`` variable holding the server admin's password
  (required to create the server and to create the instance users over T-SQL); ``admin_login``
  (default ``cellhubadmin``);
- ``location`` (default: the region's location), ``elastic_pool_sku`` (default
  ``{"name": "StandardPool", "tier": "Standard", "capacity": 100}``);
- ``hub_address``: the hub's public address, allowed through the server firewall for the T-SQL step;
- ``long_term_retention``: ARM properties of the long-term retention policy applied on each backup,
  e.g. ``{"weeklyRetention": "P4W", "monthlyRetention": "P12M", "yearlyRetention": "P5Y", "weekOfYear": 1}``;
- ``odbc_driver`` (default ``ODBC Driver 18 for SQL Server``).

The ARM side (server, elastic pool, databases, retention, point-in-time restore) goes through
azure-mgmt-sql. The instance's login is a *contained* database user (it exists in its database only,
so it can open no other): Azure has no management API for that, so it is created over T-SQL with
``pyodbc`` when that package and Microsoft's ODBC driver are installed on the worker; without them
``create_database`` raises ``PermanentDriverError`` saying so (the database itself exists by then).
"""
from __future__ import annotations

from datetime import UTC, datetime

from azure.mgmt.sql import SqlManagementClient
from azure.mgmt.sql.models import Database, ElasticPool, FirewallRule, LongTermRetentionPolicy, Server, Sku

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
    CloudNotFoundError,
    azure_client,
    cloud_call,
    require_config,
)

REQUIRED_CONFIG = ("subscription_id", "resource_group", "server", "elastic_pool")
DEFAULT_SKU = {"name": "StandardPool", "tier": "Standard", "capacity": 100}
SQL_PORT = 1433


def _bracket(name: str) -> str:
    """A T-SQL quoted identifier."""
    return "[" + name.replace("]", "]]") + "]"


def _nstring(value: str) -> str:
    """A T-SQL Unicode string literal."""
    return "N'" + value.replace("'", "''") + "'"


def contained_user_statements(*, login: str, password: str) -> list[str]:
    """T-SQL run inside the instance's database: its contained user (created, or its password re-applied),
    owner of that database and of nothing else. Each string is one batch; all are safe to repeat."""
    user = _bracket(login)
    return [
        f"IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = {_nstring(login)})\n"
        f"    CREATE USER {user} WITH PASSWORD = {_nstring(password)};\n"
        f"ELSE\n"
        f"    ALTER USER {user} WITH PASSWORD = {_nstring(password)};",
        f"ALTER ROLE db_owner ADD MEMBER {user};",
    ]


class AzureSqlDatabaseDriver(DatabaseDriver):
    """Databases in one elastic pool of one Azure SQL logical server; every ARM call through ``cloud_call``."""

    provider = "azure_sql"
    label = "Azure SQL elastic pool"
    clouds = ("azure",)
    default_for_clouds = ("azure",)
    lead_time_hours = 1.0
    host_config_keys = ("elastic_pool",)
    # Azure restores to any second natively, into a new database; the hub cannot switch an instance yet.
    capabilities = Capabilities(point_in_time_restore=True, database_restore=True)

    def __init__(self, pool, *, credential=None, transport=None, polling_interval=None):
        super().__init__(pool)
        self._credential, self._transport, self._polling_interval = credential, transport, polling_interval
        self._client: SqlManagementClient | None = None

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

    @property
    def client(self) -> SqlManagementClient:
        if self._client is None:
            self._client = azure_client(
                SqlManagementClient,
                self.required["subscription_id"],
                credential=self._credential,
                transport=self._transport,
                polling_interval=self._polling_interval,
            )
        return self._client

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
        """Delete the elastic pool, then the server if it holds no database but ``master``; absent is fine.

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
            names = cloud_call(
                f"list databases of {s['server']}",
                lambda: [d.name for d in self.client.databases.list_by_server(s["resource_group"], s["server"])],
            )
        except CloudNotFoundError:
            return
        if set(names) - {"master"}:
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

    def credentials(self, instance, *, database: str | None = None) -> DatabaseCredentials:
        database = self.own_database(instance, database)
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

    def create_database(self, *, instance) -> DatabaseCredentials:
        """Create (or update) the database in the elastic pool, then its contained user over T-SQL.

        Safe to repeat: the ARM PUT converges, the T-SQL creates the user or re-applies its password.
        Raises ``PermanentDriverError`` when pyodbc / the ODBC driver is missing on the worker.
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
        self.run_tsql(
            database=database,
            statements=contained_user_statements(login=self.login_name(instance), password=self.password(instance)),
        )
        return self.credentials(instance)

    def run_tsql(self, *, database: str, statements: list[str]) -> None:
        """Run ``statements`` (one batch each) in ``database`` as the server admin, over pyodbc.

        Raises ``PermanentDriverError`` when pyodbc is not installed (it needs Microsoft's ODBC driver,
        which is not on PyPI), ``TransientDriverError`` when the server cannot be reached.
        """
        try:
            import pyodbc
        except ImportError:
            raise PermanentDriverError(
                "Azure SQL: creating the instance's contained database user needs the pyodbc package and "
                "Microsoft's 'ODBC Driver 18 for SQL Server' (msodbcsql18) on the worker; install both"
            ) from None
        driver = self.config.get("odbc_driver", "ODBC Driver 18 for SQL Server")
        connection_string = (
            f"Driver={{{driver}}};Server=tcp:{self._host()},{SQL_PORT};Database={database};"
            f"Uid={self._admin_login()};Pwd={{{self._admin_password()}}};"
            "Encrypt=yes;TrustServerCertificate=no;Connection Timeout=30"
        )
        try:
            with pyodbc.connect(connection_string, autocommit=True) as connection:
                cursor = connection.cursor()
                for statement in statements:
                    cursor.execute(statement)
        except (pyodbc.OperationalError, pyodbc.InterfaceError) as error:
            raise TransientDriverError(f"Azure SQL database {database}: cannot connect ({error})") from error
        except pyodbc.Error as error:
            raise PermanentDriverError(f"Azure SQL database {database}: T-SQL failed ({error})") from error

    def drop_database(self, *, instance, database: str | None = None, drop_login: bool = True) -> None:
        """Delete the database (its contained user goes with it, whatever ``drop_login``); absent is fine."""
        s, database = self.required, self.own_database(instance, database)
        try:
            cloud_call(
                f"delete Azure SQL database {database}",
                lambda: self.client.databases.begin_delete(s["resource_group"], s["server"], database).result(),
            )
        except CloudNotFoundError:
            pass

    def _get_database(self, name: str):
        s = self.required
        return cloud_call(
            f"read Azure SQL database {name}",
            lambda: self.client.databases.get(s["resource_group"], s["server"], name),
        )

    def database_exists(self, *, instance, database: str | None = None) -> bool:
        try:
            self._get_database(self.own_database(instance, database))
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

    def backup_database(self, *, instance, label: str, database: str | None = None) -> BackupResult:
        """Azure backs every database up by itself (point-in-time restore within the retention window);
        this applies the pool's long-term retention policy, if configured, and returns the restore point.

        ``size_bytes`` is 0 and ``checksum`` empty: the service keeps the backup and reports neither.
        """
        s, database = self.required, self.own_database(instance, database)
        found = self._get_database(database)
        extra = {"label": label, "earliest_restore_date": str(found.earliest_restore_date or "")}
        retention = self.config.get("long_term_retention")
        if retention:
            policy = cloud_call(
                f"set long-term retention of {database}",
                lambda: self.client.long_term_retention_policies.begin_create_or_update(
                    s["resource_group"],
                    s["server"],
                    database,
                    "default",
                    LongTermRetentionPolicy({"properties": retention}),
                ).result(),
            )
            extra["long_term_retention"] = dict(retention)
            extra["long_term_retention_policy_id"] = policy.id or ""
            backups = cloud_call(
                f"list long-term backups of {database}",
                lambda: [
                    b.name
                    for b in self.client.long_term_retention_backups.list_by_database(
                        self.location, s["server"], database, only_latest_per_database=True
                    )
                ],
            )
            extra["latest_long_term_backup"] = backups[0] if backups else ""
        restore_point = datetime.now(UTC).replace(microsecond=0).isoformat()
        return BackupResult(
            location=f"{found.id or self._server_id() + '/databases/' + database}?restorePointInTime={restore_point}",
            size_bytes=0,
            checksum="",
            encrypted_with="Azure SQL transparent data encryption",
            extra=extra,
        )

    def restore_database(self, *, instance, point_in_time: datetime, new_database: str, source: str = "") -> str:
        """Restore the instance's database as it was at ``point_in_time`` into the NEW database ``new_database``
        in the same elastic pool (createMode ``PointInTimeRestore``). If ``new_database`` exists already (a
        repeated call) it is returned as is; the source is never written to. ``source`` is ignored: Azure keeps
        the backups."""
        s, source = self.required, self.database_name(instance)
        if new_database == source:
            raise PermanentDriverError(f"restore of {source} must go to a new database, not onto itself")
        try:
            self._get_database(new_database)
            return new_database
        except CloudNotFoundError:
            pass
        cloud_call(
            f"restore Azure SQL database {source} to {new_database}",
            lambda: self.client.databases.begin_create_or_update(
                s["resource_group"],
                s["server"],
                new_database,
                Database(
                    location=self.location,
                    create_mode="PointInTimeRestore",
                    source_database_id=f"{self._server_id()}/databases/{source}",
                    restore_point_in_time=point_in_time,
                    elastic_pool_id=self.elastic_pool_id(),
                    tags={"cellhub-instance": str(instance.pk), "cellhub-restored-from": source},
                ),
            ).result(),
        )
        return new_database
