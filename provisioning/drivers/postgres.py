"""A PostgreSQL server as a database pool: a database and a login role of its own per instance.

Pool config (no secrets): ``host``, ``port``, ``admin_user`` (default ``postgres``), ``admin_database``
(default ``postgres``), ``admin_password_env`` (the name of the ``CELLHUB_POOL_SECRET_…`` variable holding the admin
password; unset means no password, e.g. trust or peer auth), ``sslmode``, ``bin_dir`` (where
``pg_dump``/``pg_restore`` are, when not on the PATH nor under ``/usr/lib/postgresql/*/bin``).
Each instance's role owns its database; ``CONNECT`` is revoked from ``PUBLIC`` there and on the server's
maintenance databases (``postgres``, ``template1``), so a login opens its own database and nothing else. Passwords
reach the server only as SCRAM-SHA-256 verifiers.

Backups are ``pg_dump --format=custom`` files taken as the admin from an exported snapshot (so the
moment they hold is known exactly), streamed through Fernet encryption into
``var/backups/database/pool<id>/``. A restore creates a NEW database owned by the instance's login and
feeds the decrypted dump to ``pg_restore`` connected as that login, in one transaction.

Two kinds of pool, told apart by ``config["managed"]``:

- **external** (no ``managed``): a server set up outside the hub, reached at ``host``/``port`` as above; the hub
  only creates databases and roles on it, and restores to the dump at or before the time asked.
- **managed** (``"managed": true``): a cluster the hub itself creates and runs on this machine
  (``postgres_cluster.Cluster``: its own port, data under ``var/postgres/pool<id>/``, WAL archived continuously,
  base backups by ``base_backup``). Its admin password is derived from the credential key (stored nowhere);
  ``host``, ``port`` and ``data_dir`` are written by ``provision_pool``, so a top-up of a managed pool creates a
  new cluster. It restores to any second: the latest base backup at or before the time plus the archived WAL
  are recovered into a temporary cluster, the one database is dumped from it into a new database of the pool,
  and the temporary cluster is removed.

Top-ups (reef isolation): a pool a top-up orders is always a **managed** cluster of its own (``derived_config``),
never its template's server: what names a server (``host``, ``port``, the admin login, database, password variable
and TLS mode, ``version``, ``data_dir``) is in ``host_config_keys``, so nothing of an external template reaches the
new pool. A managed cluster runs on the hub's own machine, so it serves a ``local`` region only; elsewhere, or on a
machine without the PostgreSQL server programs, the top-up is refused (``new_host_refusal``) and the planner reports
the shortfall: staff add a server by hand (an external pool) or give the reef its cloud's database provider.
"""
import dataclasses
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import psycopg
from psycopg import errors, sql

from provisioning import crypto
from provisioning.drivers import postgres_cluster
from provisioning.drivers.base import (
    BackupResult,
    Capabilities,
    DatabaseCredentials,
    DatabaseDriver,
    PermanentDriverError,
    TransientDriverError,
    derive_secret,
    resource_prefix,
    secret_from_environment,
)
from provisioning.drivers.local_paths import var_path
from provisioning.drivers.pg_tools import pg_dump_to, pg_restore_from

# A database made by a restore carries one of these comments: an unfinished one may be dropped and redone.
RESTORING_COMMENT = "cellhub-restore: in progress"
RESTORED_COMMENT = "cellhub-restore: done"


# Databases every PostgreSQL server has, which PUBLIC may connect to by default: an instance's login could open
# them and look around (other tenants' roles and database names). On servers the hub runs they are closed.
MAINTENANCE_DATABASES = ("postgres", "template1")


def role_statements(*, login: str, password: str, role_exists: bool) -> list[sql.Composed]:
    """Create the login role (no privileges beyond logging in), or re-apply its password.

    The statement carries the password's SCRAM-SHA-256 verifier, never the password: a statement log or
    ``pg_stat_statements`` on the server holds nothing a client could log in with.
    """
    role = sql.Identifier(login)
    password_literal = sql.Literal(crypto.scram_sha256_verifier(password))
    if role_exists:
        role_statement = sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(role, password_literal)
    else:
        role_statement = sql.SQL(
            "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
        ).format(role, password_literal)
    return [role_statement]


def isolation_statements(*, database: str, login: str) -> list[sql.Composed]:
    """Only ``login`` (the owner) may connect to ``database``: PUBLIC loses its default CONNECT."""
    role, db = sql.Identifier(login), sql.Identifier(database)
    return [
        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db),
        sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(db, role),
    ]


def maintenance_lock_statements() -> list[sql.Composed]:
    """PUBLIC loses CONNECT on the server's maintenance databases (``postgres``, ``template1``); superusers,
    the hub's admin among them, still connect."""
    return [sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
            for name in MAINTENANCE_DATABASES]


def provision_role_and_database(cursor, *, database: str, login: str, password: str, admin_joins_role=False,
                                lock_maintenance_databases=False) -> None:
    """Create (or find) the login role and the database it owns; re-apply the password and the isolation grants.

    Safe against a concurrent twin (duplicates are taken as made). ``admin_joins_role``: the admin grants
    itself the new role first, which a master user that is not a superuser (RDS) needs to create a
    database owned by that role. ``lock_maintenance_databases``: on a server the hub runs (its admin a
    superuser), also close ``postgres`` and ``template1`` to PUBLIC, so the login reaches its database only.
    """
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [login])
    role_exists = cursor.fetchone() is not None
    for statement in role_statements(login=login, password=password, role_exists=role_exists):
        try:
            cursor.execute(statement)
        except errors.DuplicateObject:  # another worker made it a moment ago
            pass
    if admin_joins_role:
        cursor.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(login)))
    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
    if cursor.fetchone() is None:
        try:
            cursor.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(login))
            )
        except errors.DuplicateDatabase:
            pass
    for statement in isolation_statements(database=database, login=login):
        cursor.execute(statement)
    if lock_maintenance_databases:
        for statement in maintenance_lock_statements():
            cursor.execute(statement)


class PostgresDatabaseDriver(DatabaseDriver):
    """Creates and drops databases and roles on the server named in the pool's config."""

    provider = "postgres"
    label = "PostgreSQL server"
    clouds = ("local", "azure", "aws")  # any server the hub reaches
    default_for_clouds = ()
    lead_time_hours = 0.5
    # The server it runs on: where it is, how the hub signs in there, what it runs (a managed cluster's port is
    # re-allocated by ``provision_pool`` all the same).
    host_config_keys = ("host", "port", "admin_user", "admin_database", "admin_password_env", "sslmode",
                        "connect_timeout", "version", "data_dir")
    # External servers: the hub's own dumps, restored into a new database the instance is then switched to (to the
    # latest backup at or before the time asked). Managed clusters (``pool_capabilities``) restore to any second.
    capabilities = Capabilities(
        point_in_time_restore=True, database_restore=True, database_switching=True, backup_deletion=True
    )

    @classmethod
    def new_host_refusal(cls, *, cloud: str) -> str:
        """A new pool is a managed cluster on the hub's machine: only for a ``local`` region, and only where the
        PostgreSQL server programs are installed (and, the hub running as root, a ``postgres`` OS user exists)."""
        if cloud != "local":
            return (f"a PostgreSQL top-up creates a managed cluster on the hub's own machine, which serves a local "
                    f"region only, not a {cloud} one: add a server by hand (an external pool) or use the cloud's "
                    "database provider for this reef")
        try:
            for program in ("initdb", "pg_ctl"):
                postgres_cluster.binary(program)
            postgres_cluster.as_postgres()
        except PermanentDriverError as error:
            return f"a PostgreSQL top-up creates a managed cluster on this machine, and cannot: {error}"
        return ""

    def derived_config(self) -> dict:
        """A new pool (a top-up) is a managed cluster of its own."""
        return {"managed": True}

    @property
    def managed(self) -> bool:
        """Whether the pool is a cluster the hub runs (``config["managed"]``), not an external server."""
        return bool(self.config.get("managed"))

    def pool_capabilities(self) -> Capabilities:
        """Point-in-time restore only on a managed cluster (WAL archived); an external server restores dumps."""
        return self.capabilities if self.managed else dataclasses.replace(self.capabilities,
                                                                            point_in_time_restore=False)

    def cluster(self) -> postgres_cluster.Cluster:
        """The managed cluster of this pool (``PermanentDriverError`` on an external one, or before provisioning)."""
        if not self.managed:
            raise PermanentDriverError(f"pool {self.pool} is an external PostgreSQL server, not a managed cluster")
        if not self.config.get("port"):
            raise PermanentDriverError(f"pool {self.pool}: its cluster has not been provisioned (no port)")
        return postgres_cluster.Cluster(
            folder=postgres_cluster.root() / f"pool{self.pool.pk}", port=int(self.config["port"]),
            password=derive_secret("postgres-cluster-admin", self.pool.pk), bin_dir=self.config.get("bin_dir"),
        )

    def _connect_kwargs(self, dbname: str | None = None) -> dict:
        config = self.config
        if self.managed:
            cluster = self.cluster()
            return {"host": "127.0.0.1", "port": cluster.port, "user": postgres_cluster.ADMIN,
                    "dbname": dbname or "postgres", "password": cluster.password, "connect_timeout": 10}
        kwargs = {
            "host": config.get("host", "127.0.0.1"),
            "port": int(config.get("port", 5432)),
            "user": config.get("admin_user", "postgres"),
            "dbname": dbname or config.get("admin_database", "postgres"),
            "connect_timeout": int(config.get("connect_timeout", 10)),
        }
        password = secret_from_environment(self.pool, "admin_password_env", what="the admin password", required=False)
        if password is not None:
            kwargs["password"] = password
        if config.get("sslmode"):
            kwargs["sslmode"] = config["sslmode"]
        return kwargs

    def _admin(self):
        try:
            return psycopg.connect(autocommit=True, **self._connect_kwargs())
        except psycopg.OperationalError as error:
            if self.managed and not self.cluster().running():  # the machine restarted: the hub runs its clusters
                self.cluster().start()
                return self._admin()
            raise TransientDriverError(f"pool {self.pool}: PostgreSQL server not reachable: {error}") from error

    def _run(self, work):
        """Run ``work(cursor)`` on an admin connection, classifying PostgreSQL errors."""
        try:
            with self._admin() as connection, connection.cursor() as cursor:
                return work(cursor)
        except (psycopg.OperationalError, errors.LockNotAvailable, errors.ObjectInUse) as error:
            raise TransientDriverError(f"pool {self.pool}: {error}") from error
        except psycopg.Error as error:
            raise PermanentDriverError(f"pool {self.pool}: {error}") from error

    def provision_pool(self) -> dict:
        """External: check the server answers and return its address. Managed: create (or find) the pool's own
        cluster on a port of its own, start it, and return its address; safe to repeat."""
        if self.managed:
            port = postgres_cluster.port_allocate(f"pool{self.pool.pk}")
            self.config = {**self.config, "port": port}
            cluster = self.cluster()
            cluster.create()
            cluster.start()
            with cluster.connect() as connection:
                server_version = connection.execute("SHOW server_version").fetchone()[0]
            return {"external_id": f"postgres://127.0.0.1:{port}",
                    "config": {"host": "127.0.0.1", "port": port, "data_dir": str(cluster.data),
                               "version": server_version}}

        def version(cursor):
            cursor.execute("SHOW server_version")
            return cursor.fetchone()[0]

        server_version = self._run(version)
        kwargs = self._connect_kwargs()
        return {"external_id": f"postgres://{kwargs['host']}:{kwargs['port']}", "config": {"version": server_version}}

    def delete_pool(self) -> None:
        """External: the server outlives the pool row, nothing to delete. Managed: stop the cluster and delete
        it with its archive and base backups, and give its port back."""
        if self.managed:
            if self.config.get("port"):
                self.cluster().remove()
            postgres_cluster.port_release(f"pool{self.pool.pk}")

    def credentials(self, instance, *, database: str | None = None) -> DatabaseCredentials:
        """How the instance connects to ``database`` (default: its derived database) with its own login."""
        kwargs = self._connect_kwargs()
        database = database or self.database_name(instance)
        login, password = self.login_name(instance), self.password(instance)
        return DatabaseCredentials(
            database=database,
            login=login,
            password=password,
            host=kwargs["host"],
            port=kwargs["port"],
            url=f"postgresql://{login}:{password}@{kwargs['host']}:{kwargs['port']}/{database}",
        )

    def create_database(self, *, instance) -> DatabaseCredentials:
        """Create (or find) the role and database; re-applies the derived password and the isolation grants."""
        database, login, password = self.database_name(instance), self.login_name(instance), self.password(instance)

        def work(cursor):
            provision_role_and_database(cursor, database=database, login=login, password=password,
                                        lock_maintenance_databases=True)

        self._run(work)
        return self.credentials(instance)

    def drop_database(self, *, instance, database: str | None = None, drop_login: bool = True) -> None:
        """Drop the database (disconnecting its sessions) and then, unless ``drop_login`` is false, its role.

        ``database`` defaults to the derived one; absent is fine.
        """
        database, login = database or self.database_name(instance), self.login_name(instance)

        def work(cursor):
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            if drop_login:
                cursor.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))

        self._run(work)

    def database_exists(self, *, instance, database: str | None = None) -> bool:
        def work(cursor):
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database or self.database_name(instance)])
            return cursor.fetchone() is not None

        return self._run(work)

    def role_exists(self, *, instance) -> bool:
        def work(cursor):
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [self.login_name(instance)])
            return cursor.fetchone() is not None

        return self._run(work)

    def list_databases(self) -> list[str]:
        def work(cursor):
            cursor.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname",
                [self._name_pattern()],
            )
            return [row[0] for row in cursor.fetchall()]

        return self._run(work)

    def _name_pattern(self) -> str:
        """LIKE pattern of the names ``database_name`` makes (underscores escaped)."""
        return resource_prefix().replace("_", r"\_") + r"\_i%"

    # -- backup and restore ---------------------------------------------------------------------------------

    def binary(self, name: str) -> str:
        """The path of a PostgreSQL client program: the pool's ``bin_dir``, the PATH, or the newest installed.

        Raises ``PermanentDriverError`` naming the package to install when it is nowhere.
        """
        return postgres_cluster.binary(name, self.config.get("bin_dir"))

    def backup_path(self, label: str) -> Path:
        return var_path("backups", "database", f"pool{self.pool.pk}") / f"{label}.dump.enc"

    def backup_database(
        self, *, instance, label: str, database: str | None = None, archive: bool = False
    ) -> BackupResult:
        """``pg_dump --format=custom`` of the database, encrypted, to ``backups/database/pool<id>/<label>.dump.enc``.

        The dump reads a snapshot exported by an admin transaction held open meanwhile; ``taken_at`` is
        the server's clock when that snapshot was taken, so the backup holds exactly what was committed
        by then. The same label rewrites the same file. Raises ``BackupKeyError`` (permanent) without
        CELLHUB_BACKUP_KEY, ``PermanentDriverError`` when pg_dump is missing or fails, transient when
        the server cannot be reached.
        """
        database = database or self.database_name(instance)
        self.binary("pg_dump")  # refuse before touching anything when the client programs are missing
        crypto.backup_key()  # refuse before touching the server
        target = self.backup_path(label)
        with crypto.encrypted_file(target) as writer:
            taken_at = pg_dump_to(self._connect_kwargs(), database=database, out=writer,
                                  bin_dir=self.config.get("bin_dir"), where=f"pool {self.pool}")
        return BackupResult(
            location=target.as_uri(),
            size_bytes=writer.size,
            checksum=writer.checksum,
            encrypted_with=writer.key_id,
            extra={"taken_at": taken_at.isoformat(), "database": database, "format": "pg_dump custom"},
        )

    def _database_comment(self, database: str) -> str | None:
        """The comment of ``database`` ('' when none), or None when it does not exist."""

        def work(cursor):
            cursor.execute(
                "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = %s",
                [database],
            )
            row = cursor.fetchone()
            return None if row is None else row[0]

        return self._run(work)

    def restore_database(self, *, instance, point_in_time: datetime, new_database: str, source: str = "") -> str:
        """Restore into the NEW database ``new_database`` from ``source``, one of this pool's backups.

        External server: ``source`` is a dump (``backup_database``); the database holds what it held when the
        dump was taken (``point_in_time`` is the caller's business). Managed cluster: ``source`` is a base backup
        (``base_backup``) taken at or before ``point_in_time``; it and the archived WAL are recovered into a
        temporary cluster to exactly ``point_in_time``, and the instance's database is dumped from it: the derived
        one, or the one ``?database=<name>`` on ``source`` names (the database it used at that time, after an
        earlier restore switched it).

        The new database is owned by the instance's login, open to it alone, and filled by ``pg_restore``
        connected as that login in a single transaction. Idempotent: a finished restore of that name is
        returned as is, an unfinished one (a crash) is dropped and redone. Refuses (permanently) to touch a
        database it did not create, the derived one included.
        """
        if not source:
            raise PermanentDriverError(f"pool {self.pool}: a PostgreSQL restore needs the backup to restore from")
        if self.managed:
            query = parse_qs(urlparse(source).query)
            return self.restore_point_in_time(instance=instance, point_in_time=point_in_time,
                                              new_database=new_database, base=source.split("?", 1)[0],
                                              database=(query.get("database") or [None])[0])
        path = crypto.check_local_backup(source, checksum="")

        def chunks():
            with open(path, "rb") as encrypted:
                yield from crypto.decrypted_chunks(encrypted)

        return self._load(instance=instance, new_database=new_database, chunks=chunks(), origin=Path(path).name)

    def restore_point_in_time(self, *, instance, point_in_time: datetime, new_database: str, base: str,
                              database: str | None = None) -> str:
        """Managed cluster: recover ``base`` (a base backup's location) + WAL to ``point_in_time`` in a temporary
        cluster, and load ``database`` (default: the derived one) from it into the NEW ``new_database``.

        The temporary cluster (its folder, process and port) is removed on success and on failure. Raises
        ``PermanentDriverError`` when the recovery cannot reach the time (e.g. the WAL archive has a gap).
        """
        if new_database == self.database_name(instance):
            raise PermanentDriverError(f"restore must go to a new database, not onto {new_database}")
        if self._restored_already(new_database):
            return new_database
        cluster = self.cluster()
        folder = crypto.local_file(base) if base.startswith("file://") else Path(base)
        if not folder.is_relative_to(cluster.bases):
            raise PermanentDriverError(f"{base} is not a base backup of pool {self.pool}")
        database = database or self.database_name(instance)
        cluster.archive_now()  # the WAL up to now is in the archive, and a commit follows any earlier target
        with cluster.recovered(base=folder, point_in_time=point_in_time, name=new_database) as temporary:
            with tempfile.TemporaryFile() as dump:  # spooled: pg_dump's snapshot and pg_restore's load never overlap
                pg_dump_to({"host": "127.0.0.1", "port": temporary.port, "user": postgres_cluster.ADMIN,
                            "password": temporary.password}, database=database, out=dump,
                           bin_dir=self.config.get("bin_dir"), where=f"pool {self.pool} (temporary cluster)")
                dump.seek(0)
                self._load(instance=instance, new_database=new_database,
                           chunks=iter(lambda: dump.read(1 << 20), b""),
                           origin=f"{folder.name} + WAL to {point_in_time.isoformat()}")
        return new_database

    def _restored_already(self, new_database: str) -> bool:
        comment = self._database_comment(new_database)
        if comment is not None and comment.startswith(RESTORED_COMMENT):
            return True
        if comment is not None and comment != RESTORING_COMMENT:
            raise PermanentDriverError(f"database {new_database} exists and is not an unfinished restore: not touched")
        return False

    def _load(self, *, instance, new_database: str, chunks, origin: str) -> str:
        """Create ``new_database`` for the instance's login and ``pg_restore`` into it the custom-format dump
        ``chunks`` (connected as that login, in one transaction); marks it done. A finished one is returned as is."""
        if new_database == self.database_name(instance):
            raise PermanentDriverError(f"restore must go to a new database, not onto {new_database}")
        self.binary("pg_restore")  # refuse before creating anything when the client programs are missing
        if self._restored_already(new_database):
            return new_database
        login = self.login_name(instance)
        identifier = sql.Identifier(new_database)

        def create(cursor):
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
            cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(identifier, sql.Identifier(login)))
            cursor.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(identifier, sql.Literal(RESTORING_COMMENT)))
            for statement in isolation_statements(database=new_database, login=login):
                cursor.execute(statement)

        self._run(create)
        server = self._connect_kwargs()
        login_kwargs = {**{key: server[key] for key in ("host", "port", "sslmode", "connect_timeout") if key in server},
                        "user": login, "password": self.password(instance)}
        pg_restore_from(login_kwargs, database=new_database, chunks=chunks, bin_dir=self.config.get("bin_dir"),
                        where=f"pool {self.pool}")
        done = f"{RESTORED_COMMENT} from {origin}"[:1000]
        self._run(lambda cursor: cursor.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(identifier, sql.Literal(done))
        ))
        return new_database

    # -- a managed cluster's base backups and window ----------------------------------------------------------

    def base_backup(self, *, label: str) -> BackupResult:
        """A base backup of the managed cluster (``pg_basebackup``, verified with ``pg_verifybackup``); its
        checksum is the SHA-256 of its ``backup_manifest``, which holds the SHA-256 of every file. ``taken_at``
        is when it finished: the cluster is consistent from then on. The same label finds the same backup."""
        folder, size, checksum = self.cluster().base_backup(label)
        return BackupResult(location=folder.as_uri(), size_bytes=size, checksum=checksum,
                            extra={"taken_at": datetime.now(UTC).isoformat(), "format": "pg_basebackup"})

    def backup_checksum(self, *, location: str) -> str:
        """A base backup (a folder): ``pg_verifybackup`` checks each file against the manifest, and the manifest's
        SHA-256 is returned. A dump file: its SHA-256."""
        path = crypto.local_file(location)
        if path.is_dir():
            return self.cluster().verify_base(path)
        return super().backup_checksum(location=location)

    def delete_backup(self, *, location: str) -> None:
        """Remove a dump file or a base backup folder of this pool; absent is fine."""
        path = crypto.local_file(location)
        if self.managed and path.is_relative_to(self.cluster().bases):
            shutil.rmtree(path, ignore_errors=True)
            return
        crypto.delete_local_backup(location)

    def point_in_time_window(self, *, instance, database: str | None = None) -> tuple[datetime | None, datetime | None]:
        """(None, the newest restorable second): the newest archived WAL, or now when everything written is
        archived. The start is the pool's oldest base backup, which the hub records (``None`` here)."""
        cluster = self.cluster()
        try:
            with cluster.connect() as connection:
                archived, last_time = connection.execute(
                    "SELECT pg_walfile_name(pg_current_wal_lsn()) = last_archived_wal, last_archived_time "
                    "FROM pg_stat_archiver"
                ).fetchone()
                if archived:
                    return None, datetime.now(UTC)
                if last_time is not None:
                    return None, last_time
        except psycopg.OperationalError:
            pass  # the cluster is down: what is in the archive is what can be restored
        return None, cluster.latest_archived()

