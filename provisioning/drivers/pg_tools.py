"""The PostgreSQL client programs as a database driver runs them against endpoints it reaches over the network:
``pg_dump`` out of one server (from an exported snapshot, so the moment it holds is known), ``pg_restore`` into a
NEW database of another (or the same) server.

Used by RDS (which dumps the customer's database out of a temporary instance recovered to a point in time, and
loads it into the pool); the programs are found as the PostgreSQL driver finds them (``postgres_cluster.binary``).
Passwords and the TLS mode go through the environment, never the command line; a message that says the server
could not be reached is transient.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable
from datetime import datetime
from typing import BinaryIO

import psycopg

from provisioning.drivers import postgres_cluster
from provisioning.drivers.base import PermanentDriverError, TransientDriverError

# pg_dump / pg_restore messages that mean the server could not be reached (a retry may pass).
UNREACHABLE = ("could not connect", "connection to server", "Connection refused", "timeout expired")


def pg_binary(name: str, bin_dir: str | None = None) -> str:
    """The path of a PostgreSQL client program (``postgres_cluster.binary``: ``bin_dir``, the PATH, the newest
    installed). Raises ``PermanentDriverError`` naming the package to install when it is nowhere."""
    return postgres_cluster.binary(name, bin_dir)


def pg_client_environment(password: str | None, *, sslmode: str | None = None, connect_timeout: int = 10) -> dict:
    """Environment of pg_dump / pg_restore: the worker's own ``PGPASSWORD``/``PGPASSFILE`` never leak into a call
    made for a pool or a login (TLS settings such as ``PGSSLROOTCERT`` pass through)."""
    environment = {key: value for key, value in os.environ.items() if key not in {"PGPASSWORD", "PGPASSFILE"}}
    if password:
        environment["PGPASSWORD"] = password
    if sslmode:
        environment["PGSSLMODE"] = sslmode
    environment["PGCONNECT_TIMEOUT"] = str(int(connect_timeout))
    return environment


def pg_client_failed(where: str, program: str, code: int, stderr: bytes) -> Exception:
    """The driver error a failed client program means: transient when the server could not be reached."""
    message = stderr.decode(errors="replace").strip()[-2000:] or f"exit status {code}"
    error = TransientDriverError if any(hint in message for hint in UNREACHABLE) else PermanentDriverError
    return error(f"{where}: {program} failed: {message}")


def pg_dump_to(connect_kwargs: dict, *, database: str, out: BinaryIO, bin_dir: str | None = None,
               where: str = "") -> datetime:
    """``pg_dump --format=custom`` of ``database`` written to ``out``; returns the server's clock at the snapshot.

    The dump reads a snapshot exported by a transaction held open meanwhile, so it holds exactly what was
    committed at the returned moment. ``connect_kwargs`` are psycopg's (host, port, user, password, sslmode…).
    Raises ``PermanentDriverError`` when the database does not exist or pg_dump fails, transient when the
    server cannot be reached.
    """
    where = where or f"PostgreSQL at {connect_kwargs.get('host')}"
    pg_dump = pg_binary("pg_dump", bin_dir)
    kwargs = {**connect_kwargs, "dbname": database}
    try:
        snapshot_holder = psycopg.connect(**kwargs)
    except psycopg.OperationalError as error:
        if f'"{database}" does not exist' in str(error):
            raise PermanentDriverError(f"{where}: database {database} does not exist") from error
        raise TransientDriverError(f"{where}: PostgreSQL server not reachable: {error}") from error
    with snapshot_holder, tempfile.TemporaryFile() as stderr:
        snapshot_holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        snapshot_holder.read_only = True
        snapshot, taken_at = snapshot_holder.execute("SELECT pg_export_snapshot(), clock_timestamp()").fetchone()
        command = [
            pg_dump, "--format=custom", f"--snapshot={snapshot}", "--no-password",
            f"--host={kwargs['host']}", f"--port={kwargs.get('port', 5432)}", f"--username={kwargs['user']}",
            f"--dbname={database}",
        ]
        environment = pg_client_environment(
            kwargs.get("password"), sslmode=kwargs.get("sslmode"), connect_timeout=kwargs.get("connect_timeout", 10)
        )
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=environment)
        try:
            with process.stdout:
                for block in iter(lambda: process.stdout.read(1 << 20), b""):
                    out.write(block)
        except BaseException:
            process.kill()
            process.wait()
            raise
        if process.wait() != 0:
            stderr.seek(0)
            raise pg_client_failed(where, "pg_dump", process.returncode, stderr.read())
        snapshot_holder.rollback()
    return taken_at


def pg_restore_from(connect_kwargs: dict, *, database: str, chunks: Iterable[bytes], bin_dir: str | None = None,
                    where: str = "") -> None:
    """Feed a custom-format dump (``chunks``) to ``pg_restore`` into the existing, empty ``database``, connected
    with ``connect_kwargs`` (the instance's own login: what it restores it owns), in one transaction, without
    owners or privileges from the dump. Raises ``PermanentDriverError`` (transient when unreachable)."""
    where = where or f"PostgreSQL at {connect_kwargs.get('host')}"
    pg_restore = pg_binary("pg_restore", bin_dir)
    command = [
        pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", "--no-password",
        f"--host={connect_kwargs['host']}", f"--port={connect_kwargs.get('port', 5432)}",
        f"--username={connect_kwargs['user']}", f"--dbname={database}",
    ]
    environment = pg_client_environment(
        connect_kwargs.get("password"), sslmode=connect_kwargs.get("sslmode"),
        connect_timeout=connect_kwargs.get("connect_timeout", 10),
    )
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, env=environment
        )
        try:
            with process.stdin:
                for chunk in chunks:
                    process.stdin.write(chunk)
        except BrokenPipeError:
            pass  # pg_restore stopped early: its exit status and messages say why
        except BaseException:
            process.kill()
            process.wait()
            raise
        if process.wait() != 0:
            stderr.seek(0)
            raise pg_client_failed(where, "pg_restore", process.returncode, stderr.read())
