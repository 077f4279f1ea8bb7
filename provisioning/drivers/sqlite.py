"""The embedded default database driver: one SQLite file per instance under ``var/databases/<pool>/``.

SQLite has no logins; the instance's isolation is its own file, readable by the hub's user only.
Backups copy the file with SQLite's online backup API into memory and write it encrypted (Fernet) to
``var/backups/database/pool<id>/``; a restore writes a NEW file from one, never over the live one.

Every database file is in WAL mode and replicated continuously by Litestream (``litestream.Replicator``), so it
can be restored to any second of the retention: ``litestream restore -timestamp`` writes the file as it was then
aside, it is checked (``PRAGMA integrity_check``) and only then moved into the pool as the NEW database.
"""
import dataclasses
import io
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

from provisioning import crypto
from provisioning.drivers.base import (
    BackupResult,
    Capabilities,
    DatabaseCredentials,
    DatabaseDriver,
    PermanentDriverError,
    TransientDriverError,
)
from provisioning.drivers.litestream import Replicator
from provisioning.drivers.local_paths import var_path


class SqliteDatabaseDriver(DatabaseDriver):
    """Databases are files; create makes the file (with a marker table), drop removes it."""

    provider = "sqlite"
    label = "SQLite files"
    clouds = ("local",)
    default_for_clouds = ("local",)
    lead_time_hours = 0.1
    # The embedded default: its host is this machine, the one there is. A new pool (a top-up) is a new folder,
    # ``var/databases/pool<id>/``, derived from its id; nothing in its config names a host.
    host_config_keys = ()
    # Any second of the Litestream replica, restored into a new database the instance is then switched to; the hub's
    # own (encrypted) dumps stay for on-demand and final backups.
    capabilities = Capabilities(
        point_in_time_restore=True, database_restore=True, database_switching=True, backup_deletion=True
    )

    @property
    def replicated(self) -> bool:
        """Whether the pool's databases are replicated by Litestream (``config["litestream"]``; every pool a top-up
        makes has it, see ``derived_config``); without it restores use the hub's dumps as before."""
        return bool(self.config.get("litestream"))

    def derived_config(self) -> dict:
        return {"litestream": True}

    def pool_capabilities(self) -> Capabilities:
        """Any second only where Litestream replicates the pool's databases."""
        return self.capabilities if self.replicated else dataclasses.replace(self.capabilities,
                                                                               point_in_time_restore=False)

    def replicator(self) -> Replicator:
        return Replicator(f"pool{self.pool.pk}")

    def ensure_replication(self, *, instance, database: str | None = None) -> None:
        """Start replicating the database's file if no Litestream process does (idempotent; the scheduler's
        replication pass calls it too, so a process that died is started again)."""
        path = self._file(instance, database)
        if self.replicated and path.exists():
            self.replicator().ensure(path.stem, path)

    def _folder(self):
        return var_path("databases", f"pool{self.pool.pk}")

    def _file(self, instance, database: str | None = None):
        return self._folder() / f"{database or self.database_name(instance)}.sqlite3"

    def provision_pool(self) -> dict:
        return {"external_id": str(self._folder()), "config": {}}

    def delete_pool(self) -> None:
        """Stop replicating the pool's databases and delete its folder with every file left in it (a top-up's
        failure, or a retirement once no instance uses the pool); absent is fine. The replicas and the hub's
        encrypted dumps are backups: their retention deletes them, not this."""
        self.replicator().stop_all()
        shutil.rmtree(self._folder(), ignore_errors=True)

    def create_database(self, *, instance) -> DatabaseCredentials:
        """Create (or find) the instance's file; idempotent."""
        path = self._file(instance)
        try:
            with sqlite3.connect(path) as connection:
                if self.replicated:
                    connection.execute("PRAGMA journal_mode=WAL")  # Litestream replicates the WAL
                connection.execute("CREATE TABLE IF NOT EXISTS cellhub_owner (instance TEXT PRIMARY KEY)")
                connection.execute("INSERT OR IGNORE INTO cellhub_owner VALUES (?)", (instance.name,))
            connection.close()
            os.chmod(path, 0o600)
        except sqlite3.OperationalError as error:  # locked or disk trouble: may pass on retry
            raise TransientDriverError(f"sqlite database {path}: {error}") from error
        self.ensure_replication(instance=instance)
        return self.credentials(instance)

    def credentials(self, instance, *, database: str | None = None) -> DatabaseCredentials:
        """The instance's file (``database`` names another one, e.g. after a restore), without touching it."""
        database = database or self.database_name(instance)
        path = self._file(instance, database)
        return DatabaseCredentials(database=database, login="", password="", host="", port=None, url=f"sqlite:///{path}")

    def drop_database(self, *, instance, database: str | None = None, drop_login: bool = True) -> None:
        """Stop its replication (the replica is kept for restores) and remove the file and its WAL (``drop_login``
        means nothing here: SQLite has no logins); absent is fine."""
        path = self._file(instance, database)
        self.replicator().stop(path.stem)
        for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)

    def database_exists(self, *, instance, database: str | None = None) -> bool:
        return self._file(instance, database).exists()

    def list_databases(self) -> list[str]:
        return sorted(p.stem for p in self._folder().glob("*.sqlite3"))

    def backup_path(self, label: str) -> Path:
        return var_path("backups", "database", f"pool{self.pool.pk}") / f"{label}.sqlite3.enc"

    def backup_database(
        self, *, instance, label: str, database: str | None = None, archive: bool = False
    ) -> BackupResult:
        """Copy the database with SQLite's backup API (a consistent copy while others write) and store it encrypted.

        ``taken_at`` is when the copy finished: it holds nothing committed after that. The same label
        rewrites the same file. Raises ``BackupKeyError`` (permanent) without CELLHUB_BACKUP_KEY,
        ``PermanentDriverError`` when the file does not exist, transient while it is locked.
        """
        source = self._file(instance, database)
        if not source.exists():
            raise PermanentDriverError(f"sqlite database {source} does not exist")
        crypto.backup_key()
        try:
            with sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True) as live, sqlite3.connect(":memory:") as copy:
                live.backup(copy)
                taken_at = datetime.now(UTC)
                image = copy.serialize()
            live.close()
            copy.close()
        except sqlite3.OperationalError as error:
            raise TransientDriverError(f"sqlite database {source}: {error}") from error
        target = self.backup_path(label)
        with crypto.encrypted_file(target) as writer:
            writer.write(image)
        return BackupResult(
            location=target.as_uri(),
            size_bytes=writer.size,
            checksum=writer.checksum,
            encrypted_with=writer.key_id,
            extra={"taken_at": taken_at.isoformat(), "database": source.stem, "format": "sqlite backup API"},
        )

    def point_in_time_window(self, *, instance, database: str | None = None):
        """(earliest, latest): from the first moment the replica of the instance's first (derived) database holds —
        a restore to a time before a switch reads the replica of the database used then, kept after it is
        dropped — to the newest moment the replica of its current database (``database``) holds."""
        earliest, latest = self.replicator().window(self._file(instance, database).stem)
        first, _ = self.replicator().window(self.database_name(instance))
        return min(filter(None, (earliest, first)), default=None), latest

    def restore_database(self, *, instance, point_in_time: datetime, new_database: str, source: str = "") -> str:
        """Write the database as it was at ``point_in_time`` into the NEW file ``<new_database>.sqlite3``; returns
        ``new_database``.

        ``source`` is one of the hub's backups (a file), or empty / ``?database=<name>`` for the Litestream replica
        of the derived database (or of the one named: the one the instance used at that time). The file appears
        whole (written aside, checked, then renamed), so one that exists is a finished restore and is returned as
        is; its replication starts. Refuses to write the derived database's file.
        """
        if new_database == self.database_name(instance):
            raise PermanentDriverError(f"restore must go to a new database, not onto {new_database}")
        target = self._file(instance, new_database)
        if target.exists():
            self.ensure_replication(instance=instance, database=new_database)
            return new_database
        if not source:
            raise PermanentDriverError(f"pool {self.pool}: a SQLite restore needs the backup to restore from")
        if source.startswith("?"):
            database = (parse_qs(source.lstrip("?")).get("database") or [self.database_name(instance)])[0]
            partial = target.with_name(target.name + ".partial")
            for suffix in ("", "-wal", "-shm"):
                partial.with_name(partial.name + suffix).unlink(missing_ok=True)
            self.replicator().restore(database, point_in_time=point_in_time, output=partial)
            try:
                with sqlite3.connect(partial) as check:
                    verdict = check.execute("PRAGMA integrity_check").fetchone()[0]
                    check.execute("PRAGMA journal_mode=WAL")
                check.close()
            except sqlite3.DatabaseError as error:
                verdict = str(error)
            if verdict != "ok":
                partial.unlink(missing_ok=True)
                raise PermanentDriverError(f"the restored copy of {database} fails its integrity check: {verdict}")
            os.chmod(partial, 0o600)
            partial.replace(target)
            self.ensure_replication(instance=instance, database=new_database)
            if self.replicated:
                self.replicator().wait_replicated(new_database)
            return new_database
        path = crypto.check_local_backup(source, checksum="")
        image = io.BytesIO()
        crypto.decrypt_to(path, image)
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        try:
            with sqlite3.connect(":memory:") as loaded, sqlite3.connect(partial) as written:
                loaded.deserialize(image.getvalue())
                loaded.backup(written)
            loaded.close()
            written.close()
            os.chmod(partial, 0o600)
            partial.replace(target)
            self.ensure_replication(instance=instance, database=new_database)
        except sqlite3.DatabaseError as error:
            partial.unlink(missing_ok=True)
            raise PermanentDriverError(f"backup {path.name} is not a SQLite database image: {error}") from error
        return new_database

    def delete_backup(self, *, location: str) -> None:
        """Remove a backup file of this pool; absent is fine."""
        crypto.delete_local_backup(location)
