"""AWS RDS for PostgreSQL as a database pool: one RDS instance; one database and login role per instance.

Pool config (no secrets):

- ``master_password_env``: the name of the ``CELLHUB_POOL_SECRET_…`` variable holding the master password (required);
- ``db_instance_identifier`` (default ``<prefix>-p<pool id>``), ``master_username`` (default ``cellhub_admin``);
- ``instance_class`` (default ``db.t4g.medium``), ``allocated_storage_gib`` (default 100),
  ``engine_version`` (default: RDS's), ``backup_retention_days`` (default 7), ``multi_az`` (default false),
  ``kms_key_id`` (default: the RDS service key), ``db_subnet_group``, ``vpc_security_group_ids``;
- ``sslmode`` for the hub's SQL connection (default ``require``).

The instance is created with deletion protection, encrypted storage and automated backups. RDS has no
API for a database *inside* an instance, so the database and its login are made over SQL (psycopg) with
the same statements as a local PostgreSQL server (``provisioning.drivers.postgres``). A snapshot or a
point-in-time restore covers the whole RDS instance, i.e. every database of the pool: the restore goes to
a NEW RDS instance, where the instance's database keeps its name.
"""
from __future__ import annotations

import re
from datetime import datetime

import psycopg
from psycopg import errors, sql

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
from provisioning.drivers.cloud_retry import CloudConflictError, CloudNotFoundError, aws_client, cloud_call
from provisioning.drivers.postgres import provision_role_and_database

GIB = 1 << 30


def rds_identifier(text: str, *, max_length: int = 63) -> str:
    """An RDS identifier made from ``text``: lowercase letters, digits and single hyphens, starting with a letter."""
    identifier = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")
    if not identifier or not identifier[0].isalpha():
        identifier = f"c-{identifier}".rstrip("-")
    return identifier[:max_length].rstrip("-")


def _run_sql(connect_kwargs: dict, work):
    """Run ``work(cursor)`` on an autocommit admin connection, sorting PostgreSQL errors into driver errors."""
    try:
        with psycopg.connect(autocommit=True, **connect_kwargs) as connection, connection.cursor() as cursor:
            return work(cursor)
    except (psycopg.OperationalError, errors.LockNotAvailable, errors.ObjectInUse) as error:
        raise TransientDriverError(f"PostgreSQL at {connect_kwargs.get('host')}: {error}") from error
    except psycopg.Error as error:
        raise PermanentDriverError(f"PostgreSQL at {connect_kwargs.get('host')}: {error}") from error


def ensure_instance_database(connect_kwargs: dict, *, database: str, login: str, password: str) -> None:
    """Create (or find) the login role and the database it owns; re-apply the password and the isolation grants.

    Works for a master user that is not a superuser (RDS): it grants itself membership of the new role
    first, which PostgreSQL 16 requires to create a database owned by that role.
    """

    def work(cursor):
        provision_role_and_database(cursor, database=database, login=login, password=password, admin_joins_role=True)

    _run_sql(connect_kwargs, work)


def drop_instance_database(connect_kwargs: dict, *, database: str, login: str) -> None:
    """Drop the database (closing its sessions) and its login role; absent is fine."""

    def work(cursor):
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        cursor.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))

    _run_sql(connect_kwargs, work)


class RdsDatabaseDriver(DatabaseDriver):
    """Databases on one RDS for PostgreSQL instance; AWS calls through ``cloud_call``, SQL through psycopg."""

    provider = "aws_rds"
    label = "AWS RDS"
    clouds = ("aws",)
    default_for_clouds = ("aws",)
    lead_time_hours = 1.0
    host_config_keys = ("db_instance_identifier",)
    # RDS recovers the whole server to any second, into a new RDS instance; the hub cannot switch an instance yet.
    capabilities = Capabilities(point_in_time_restore=True, database_restore=True)

    def __init__(self, pool):
        super().__init__(pool)
        self._clients: dict = {}

    def _client(self, service: str):
        """The boto3 client of ``service`` in the pool's region, created on first use."""
        if service not in self._clients:
            self._clients[service] = aws_client(service, self.pool.reef.region.location)
        return self._clients[service]

    @property
    def identifier(self) -> str:
        return self.config.get("db_instance_identifier") or rds_identifier(resource_name("p", self.pool.pk))

    def _master_username(self) -> str:
        return self.config.get("master_username", "cellhub_admin")

    def _master_password(self) -> str:
        return secret_from_environment(self.pool, "master_password_env", what="the RDS master password")

    def describe(self, identifier: str | None = None) -> dict | None:
        """The RDS instance's description, or ``None`` when it does not exist."""
        identifier = identifier or self.identifier
        try:
            response = cloud_call(
                f"describe RDS instance {identifier}",
                lambda: self._client("rds").describe_db_instances(DBInstanceIdentifier=identifier),
                not_found=("DBInstanceNotFound", "DBInstanceNotFoundFault"),
            )
        except CloudNotFoundError:
            return None
        return response["DBInstances"][0]

    def _network(self) -> dict:
        params = {}
        if self.config.get("db_subnet_group"):
            params["DBSubnetGroupName"] = self.config["db_subnet_group"]
        if self.config.get("vpc_security_group_ids"):
            params["VpcSecurityGroupIds"] = list(self.config["vpc_security_group_ids"])
        return params

    def _tags(self, **extra) -> list[dict]:
        tags = {"cellhub-pool": str(self.pool.pk), **extra}
        return [{"Key": key, "Value": value} for key, value in tags.items()]

    # -- pool -----------------------------------------------------------------------------
    def provision_pool(self) -> dict:
        """Create the RDS instance (deletion protection, encrypted storage, automated backups), or find it.

        Returns at once: RDS takes minutes to create an instance, and ``create_database`` raises
        ``TransientDriverError`` until it is available.
        """
        found = self.describe()
        if found is None:
            params = {
                "DBInstanceIdentifier": self.identifier,
                "DBInstanceClass": self.config.get("instance_class", "db.t4g.medium"),
                "Engine": "postgres",
                "AllocatedStorage": int(self.config.get("allocated_storage_gib", 100)),
                "StorageType": "gp3",
                "MasterUsername": self._master_username(),
                "MasterUserPassword": self._master_password(),
                "BackupRetentionPeriod": int(self.config.get("backup_retention_days", 7)),
                "DeletionProtection": True,
                "StorageEncrypted": True,
                "MultiAZ": bool(self.config.get("multi_az", False)),
                "PubliclyAccessible": False,
                "CopyTagsToSnapshot": True,
                "Tags": self._tags(),
                **self._network(),
            }
            if self.config.get("engine_version"):
                params["EngineVersion"] = self.config["engine_version"]
            if self.config.get("kms_key_id"):
                params["KmsKeyId"] = self.config["kms_key_id"]
            try:
                found = cloud_call(
                    f"create RDS instance {self.identifier}",
                    lambda: self._client("rds").create_db_instance(**params),
                    conflict=("DBInstanceAlreadyExists", "DBInstanceAlreadyExistsFault"),
                )["DBInstance"]
            except CloudConflictError:
                found = self.describe()
        return {"external_id": found["DBInstanceArn"], "config": {"db_instance_identifier": self.identifier}}

    def delete_pool(self) -> None:
        """Delete the RDS instance after a final snapshot (lifting its deletion protection); absent is fine."""
        found = self.describe()
        if found is None or found.get("DBInstanceStatus") == "deleting":
            return
        rds = self._client("rds")
        if found.get("DeletionProtection"):
            cloud_call(
                f"lift deletion protection of {self.identifier}",
                lambda: rds.modify_db_instance(
                    DBInstanceIdentifier=self.identifier, DeletionProtection=False, ApplyImmediately=True
                ),
            )
        try:
            cloud_call(
                f"delete RDS instance {self.identifier}",
                lambda: rds.delete_db_instance(
                    DBInstanceIdentifier=self.identifier,
                    SkipFinalSnapshot=False,
                    FinalDBSnapshotIdentifier=rds_identifier(f"{self.identifier}-final", max_length=255),
                    DeleteAutomatedBackups=False,
                ),
                not_found=("DBInstanceNotFound", "DBInstanceNotFoundFault"),
            )
        except CloudNotFoundError:
            pass

    # -- SQL side -------------------------------------------------------------------------
    def endpoint(self) -> tuple[str, int]:
        """(host, port) of the RDS instance; ``TransientDriverError`` while RDS is still creating it."""
        found = self.describe()
        if found is None:
            raise PermanentDriverError(f"RDS pool {self.pool}: instance {self.identifier} does not exist")
        endpoint = found.get("Endpoint") or {}
        if not endpoint.get("Address"):
            raise TransientDriverError(
                f"RDS instance {self.identifier} has no endpoint yet (status {found.get('DBInstanceStatus')})"
            )
        return endpoint["Address"], int(endpoint.get("Port") or 5432)

    def admin_connect_kwargs(self) -> dict:
        """psycopg connection parameters of the master user on the instance's ``postgres`` database."""
        host, port = self.endpoint()
        return {
            "host": host,
            "port": port,
            "user": self._master_username(),
            "password": self._master_password(),
            "dbname": "postgres",
            "sslmode": self.config.get("sslmode", "require"),
            "connect_timeout": 10,
        }

    def credentials(self, instance, *, database: str | None = None) -> DatabaseCredentials:
        database = self.own_database(instance, database)
        login, password = self.login_name(instance), self.password(instance)
        host, port = self.endpoint()
        sslmode = self.config.get("sslmode", "require")
        return DatabaseCredentials(
            database=database,
            login=login,
            password=password,
            host=host,
            port=port,
            url=f"postgresql://{login}:{password}@{host}:{port}/{database}?sslmode={sslmode}",
        )

    def create_database(self, *, instance) -> DatabaseCredentials:
        """Create (or find) the instance's database and login on the RDS instance, over SQL."""
        ensure_instance_database(
            self.admin_connect_kwargs(),
            database=self.database_name(instance),
            login=self.login_name(instance),
            password=self.password(instance),
        )
        return self.credentials(instance)

    def drop_database(self, *, instance, database: str | None = None, drop_login: bool = True) -> None:
        """Drop the database and its login (the login even without ``drop_login``: the database is the derived
        one); absent (or no RDS instance at all) is fine."""
        name = self.own_database(instance, database)
        if self.describe() is None:
            return
        drop_instance_database(self.admin_connect_kwargs(), database=name, login=self.login_name(instance))

    def database_exists(self, *, instance, database: str | None = None) -> bool:
        name = self.own_database(instance, database)

        def work(cursor):
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            return cursor.fetchone() is not None

        return _run_sql(self.admin_connect_kwargs(), work)

    def list_databases(self) -> list[str]:
        def work(cursor):
            pattern = resource_prefix().replace("_", r"\_") + r"\_i%"
            cursor.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname", [pattern])
            return [row[0] for row in cursor.fetchall()]

        return _run_sql(self.admin_connect_kwargs(), work)

    # -- backups --------------------------------------------------------------------------
    def snapshot_identifier(self, instance, label: str) -> str:
        return rds_identifier(f"{resource_name('i', instance.pk)}-{label}", max_length=255)

    def backup_database(self, *, instance, label: str, database: str | None = None) -> BackupResult:
        """A manual snapshot of the RDS instance (it holds the instance's database), one per label.

        The same label finds the same snapshot. The snapshot covers every database of the pool.
        """
        self.own_database(instance, database)
        rds, snapshot_id = self._client("rds"), self.snapshot_identifier(instance, label)
        not_found = ("DBSnapshotNotFound", "DBSnapshotNotFoundFault")
        try:
            snapshot = cloud_call(
                f"describe RDS snapshot {snapshot_id}",
                lambda: rds.describe_db_snapshots(DBSnapshotIdentifier=snapshot_id),
                not_found=not_found,
            )["DBSnapshots"][0]
        except CloudNotFoundError:
            try:
                snapshot = cloud_call(
                    f"create RDS snapshot {snapshot_id}",
                    lambda: rds.create_db_snapshot(
                        DBSnapshotIdentifier=snapshot_id,
                        DBInstanceIdentifier=self.identifier,
                        Tags=self._tags(**{"cellhub-instance": str(instance.pk),
                                           "cellhub-database": self.database_name(instance)}),
                    ),
                    conflict=("DBSnapshotAlreadyExists", "DBSnapshotAlreadyExistsFault"),
                )["DBSnapshot"]
            except CloudConflictError:
                snapshot = cloud_call(
                    f"describe RDS snapshot {snapshot_id}",
                    lambda: rds.describe_db_snapshots(DBSnapshotIdentifier=snapshot_id),
                )["DBSnapshots"][0]
        return BackupResult(
            location=snapshot["DBSnapshotArn"],
            size_bytes=int(snapshot.get("AllocatedStorage") or 0) * GIB,
            checksum="",
            encrypted_with=snapshot.get("KmsKeyId", "") if snapshot.get("Encrypted") else "",
            extra={
                "snapshot": snapshot_id,
                "status": snapshot.get("Status", ""),
                "database": self.database_name(instance),
                "scope": "the whole RDS instance",
            },
        )

    def restore_database(self, *, instance, point_in_time: datetime, new_database: str, source: str = "") -> str:
        """Restore the pool's RDS instance as it was at ``point_in_time`` into a NEW RDS instance named from
        ``new_database``; returns that instance's identifier (the instance's database keeps its name there).
        ``source`` is ignored: RDS keeps the backups.

        A repeated call finds the instance it created. The source instance is never written to.
        """
        target = rds_identifier(new_database)
        if target == self.identifier:
            raise PermanentDriverError(f"restore must go to a new RDS instance, not onto {target}")
        if self.describe(target) is not None:
            return target
        params = {
            "SourceDBInstanceIdentifier": self.identifier,
            "TargetDBInstanceIdentifier": target,
            "RestoreTime": point_in_time,
            "PubliclyAccessible": False,
            "DeletionProtection": True,
            "CopyTagsToSnapshot": True,
            "Tags": self._tags(**{"cellhub-instance": str(instance.pk), "cellhub-restored-from": self.identifier}),
            **self._network(),
        }
        if self.config.get("instance_class"):
            params["DBInstanceClass"] = self.config["instance_class"]
        try:
            cloud_call(
                f"restore RDS instance {self.identifier} to {target}",
                lambda: self._client("rds").restore_db_instance_to_point_in_time(**params),
                conflict=("DBInstanceAlreadyExists", "DBInstanceAlreadyExistsFault"),
            )
        except CloudConflictError:
            pass
        return target
