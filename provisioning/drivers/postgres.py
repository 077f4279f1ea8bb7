"""A PostgreSQL server as a database pool: a database and a login role of its own per instance.

Pool config (no secrets): ``host``, ``port``, ``admin_user`` (default ``postgres``), ``admin_database``
(default ``postgres``), ``admin_password_env`` (the name of the environment variable holding the admin
password; unset means no password, e.g. trust or peer auth), ``sslmode``.
Each instance's role owns its database; ``CONNECT`` is revoked from ``PUBLIC``, so no other
instance's login can open it.
"""
import os

import psycopg
from psycopg import errors, sql

from provisioning.drivers.base import (
    DatabaseCredentials,
    DatabaseDriver,
    PermanentDriverError,
    TransientDriverError,
    resource_prefix,
)


def role_statements(*, login: str, password: str, role_exists: bool) -> list[sql.Composed]:
    """Create the login role (no privileges beyond logging in), or re-apply its password."""
    role = sql.Identifier(login)
    password_literal = sql.Literal(password)
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


class PostgresDatabaseDriver(DatabaseDriver):
    """Creates and drops databases and roles on the server named in the pool's config."""

    def _connect_kwargs(self, dbname: str | None = None) -> dict:
        config = self.config
        kwargs = {
            "host": config.get("host", "127.0.0.1"),
            "port": int(config.get("port", 5432)),
            "user": config.get("admin_user", "postgres"),
            "dbname": dbname or config.get("admin_database", "postgres"),
            "connect_timeout": int(config.get("connect_timeout", 10)),
        }
        password_env = config.get("admin_password_env")
        if password_env:
            if password_env not in os.environ:
                raise PermanentDriverError(
                    f"pool {self.pool}: environment variable {password_env} (the admin password) is not set"
                )
            kwargs["password"] = os.environ[password_env]
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

    def credentials(self, instance) -> DatabaseCredentials:
        kwargs = self._connect_kwargs()
        database, login, password = self.database_name(instance), self.login_name(instance), self.password(instance)
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
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [login])
            role_exists = cursor.fetchone() is not None
            for statement in role_statements(login=login, password=password, role_exists=role_exists):
                try:
                    cursor.execute(statement)
                except errors.DuplicateObject:  # another worker made it a moment ago
                    pass
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

        self._run(work)
        return self.credentials(instance)

    def drop_database(self, *, instance) -> None:
        """Drop the database (disconnecting its sessions) and then its role; absent is fine."""
        database, login = self.database_name(instance), self.login_name(instance)

        def work(cursor):
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            cursor.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))

        self._run(work)

    def database_exists(self, *, instance) -> bool:
        def work(cursor):
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.database_name(instance)])
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
