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
"""
import glob
import os
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import errors, sql

from provisioning import crypto
from provisioning.drivers.base import (
    BackupResult,
    Capabilities,
    DatabaseCredentials,
    DatabaseDriver,
    PermanentDriverError,
    TransientDriverError,
    resource_prefix,
    secret_from_environment,
)
from provisioning.drivers.local_paths import var_path

# A database made by a restore carries one of these comments: an unfinished one may be dropped and redone.
RESTORING_COMMENT = "cellhub-restore: in progress"
RESTORED_COMMENT = "cellhub-restore: done"
# pg_dump / pg_restore messages that mean the server could not be reached (a retry may pass).
_UNREACHABLE = ("could not connect", "connection to server", "Connection refused", "timeout expired")


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
    host_config_keys = ("version",)  # of the server it runs on
    # The hub's own dumps, restored into a new database the instance is then switched to (to the latest backup at
    # or before the time asked: not to any second).
    capabilities = Capabilities(database_restore=True, database_switching=True, backup_deletion=True)

    def _connect_kwargs(self, dbname: str | None = None) -> dict:
        config = self.config
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
        """A PostgreSQL server is set up outside the hub; this checks it answers and returns its address."""
        def version(cursor):
            cursor.execute("SHOW server_version")
            return cursor.fetchone()[0]

        server_version = self._run(version)
        kwargs = self._connect_kwargs()
        return {"external_id": f"postgres://{kwargs['host']}:{kwargs['port']}", "config": {"version": server_version}}

    def delete_pool(self) -> None:
        """The server outlives the pool row; nothing to delete."""

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
        if self.config.get("bin_dir"):
            candidate = Path(self.config["bin_dir"]) / name
            if candidate.is_file():
                return str(candidate)
        found = shutil.which(name)
        if found:
            return found

        def major(path: str) -> float:
            version = Path(path).parent.parent.name
            return float(version) if version.replace(".", "", 1).isdigit() else 0.0

        installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=major)
        if installed:
            return installed[-1]
        raise PermanentDriverError(
            f"{name} is not installed on this worker: install the postgresql-client package "
            "(its major version at least the server's)"
        )

    def _client_environment(self, password: str | None) -> dict:
        """Environment of pg_dump / pg_restore: the password and TLS mode never go on the command line.

        The worker's own ``PGPASSWORD``/``PGPASSFILE`` never leak into a call made for a pool or a login
        (TLS settings such as ``PGSSLROOTCERT`` pass through).
        """
        environment = {key: value for key, value in os.environ.items() if key not in {"PGPASSWORD", "PGPASSFILE"}}
        if password:
            environment["PGPASSWORD"] = password
        if self.config.get("sslmode"):
            environment["PGSSLMODE"] = self.config["sslmode"]
        environment["PGCONNECT_TIMEOUT"] = str(int(self.config.get("connect_timeout", 10)))
        return environment

    def _client_failed(self, program: str, code: int, stderr: bytes) -> Exception:
        message = stderr.decode(errors="replace").strip()[-2000:] or f"exit status {code}"
        error = TransientDriverError if any(hint in message for hint in _UNREACHABLE) else PermanentDriverError
        return error(f"pool {self.pool}: {program} failed: {message}")

    def backup_path(self, label: str) -> Path:
        return var_path("backups", "database", f"pool{self.pool.pk}") / f"{label}.dump.enc"

    def backup_database(self, *, instance, label: str, database: str | None = None) -> BackupResult:
        """``pg_dump --format=custom`` of the database, encrypted, to ``backups/database/pool<id>/<label>.dump.enc``.

        The dump reads a snapshot exported by an admin transaction held open meanwhile; ``taken_at`` is
        the server's clock when that snapshot was taken, so the backup holds exactly what was committed
        by then. The same label rewrites the same file. Raises ``BackupKeyError`` (permanent) without
        CELLHUB_BACKUP_KEY, ``PermanentDriverError`` when pg_dump is missing or fails, transient when
        the server cannot be reached.
        """
        database = database or self.database_name(instance)
        pg_dump = self.binary("pg_dump")
        crypto.backup_key()  # refuse before touching the server
        target = self.backup_path(label)
        kwargs = self._connect_kwargs(dbname=database)
        try:
            snapshot_holder = psycopg.connect(**kwargs)
        except psycopg.OperationalError as error:
            if f'"{database}" does not exist' in str(error):
                raise PermanentDriverError(f"pool {self.pool}: database {database} does not exist") from error
            raise TransientDriverError(f"pool {self.pool}: PostgreSQL server not reachable: {error}") from error
        with snapshot_holder, tempfile.TemporaryFile() as stderr:
            snapshot_holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            snapshot_holder.read_only = True
            snapshot, taken_at = snapshot_holder.execute("SELECT pg_export_snapshot(), clock_timestamp()").fetchone()
            command = [
                pg_dump, "--format=custom", f"--snapshot={snapshot}", "--no-password",
                f"--host={kwargs['host']}", f"--port={kwargs['port']}", f"--username={kwargs['user']}",
                f"--dbname={database}",
            ]
            with crypto.encrypted_file(target) as writer:
                process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=stderr,
                    env=self._client_environment(kwargs.get("password")),
                )
                try:
                    with process.stdout:
                        for block in iter(lambda: process.stdout.read(1 << 20), b""):
                            writer.write(block)
                except BaseException:
                    process.kill()
                    process.wait()
                    raise
                if process.wait() != 0:
                    stderr.seek(0)
                    raise self._client_failed("pg_dump", process.returncode, stderr.read())
            snapshot_holder.rollback()
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
        """Restore the dump at ``source`` (one of this pool's backups) into the NEW database ``new_database``.

        The new database is owned by the instance's login, open to it alone, and filled by ``pg_restore``
        connected as that login in a single transaction. Idempotent: a finished restore of that name is
        returned as is, an unfinished one (a crash) is dropped and redone. Refuses (permanently) to touch a
        database it did not create, the derived one included. ``point_in_time`` is the caller's business:
        dumps restore to the moment they were taken.
        """
        if not source:
            raise PermanentDriverError(f"pool {self.pool}: a PostgreSQL restore needs the backup to restore from")
        if new_database == self.database_name(instance):
            raise PermanentDriverError(f"restore must go to a new database, not onto {new_database}")
        path = crypto.check_local_backup(source, checksum="")
        pg_restore = self.binary("pg_restore")
        comment = self._database_comment(new_database)
        if comment is not None and comment.startswith(RESTORED_COMMENT):
            return new_database
        if comment is not None and comment != RESTORING_COMMENT:
            raise PermanentDriverError(f"database {new_database} exists and is not an unfinished restore: not touched")
        login = self.login_name(instance)
        identifier = sql.Identifier(new_database)

        def create(cursor):
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
            cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(identifier, sql.Identifier(login)))
            cursor.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(identifier, sql.Literal(RESTORING_COMMENT)))
            for statement in isolation_statements(database=new_database, login=login):
                cursor.execute(statement)

        self._run(create)
        kwargs = self._connect_kwargs()
        command = [
            pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", "--no-password",
            f"--host={kwargs['host']}", f"--port={kwargs['port']}", f"--username={login}", f"--dbname={new_database}",
        ]
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                env=self._client_environment(self.password(instance)),
            )
            try:
                with open(path, "rb") as encrypted, process.stdin:
                    for chunk in crypto.decrypted_chunks(encrypted):
                        process.stdin.write(chunk)
            except BrokenPipeError:
                pass  # pg_restore stopped early: its exit status and messages say why
            except BaseException:
                process.kill()
                process.wait()
                raise
            if process.wait() != 0:
                stderr.seek(0)
                raise self._client_failed("pg_restore", process.returncode, stderr.read())
        done = f"{RESTORED_COMMENT} from {Path(path).name}"
        self._run(lambda cursor: cursor.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(identifier, sql.Literal(done))
        ))
        return new_database

    def delete_backup(self, *, location: str) -> None:
        """Remove a dump file of this pool; absent is fine."""
        crypto.delete_local_backup(location)
