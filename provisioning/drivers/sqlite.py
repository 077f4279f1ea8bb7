"""The embedded default database driver: one SQLite file per instance under ``var/databases/<pool>/``.

SQLite has no logins; the instance's isolation is its own file, readable by the hub's user only.
"""
import os
import sqlite3

from provisioning.drivers.base import DatabaseCredentials, DatabaseDriver, TransientDriverError
from provisioning.drivers.local_paths import var_path


class SqliteDatabaseDriver(DatabaseDriver):
    """Databases are files; create makes the file (with a marker table), drop removes it."""

    def _folder(self):
        return var_path("databases", f"pool{self.pool.pk}")

    def _file(self, instance):
        return self._folder() / f"{self.database_name(instance)}.sqlite3"

    def provision_pool(self) -> dict:
        return {"external_id": str(self._folder()), "config": {}}

    def delete_pool(self) -> None:
        folder = self._folder()
        if not any(folder.iterdir()):
            folder.rmdir()

    def create_database(self, *, instance) -> DatabaseCredentials:
        """Create (or find) the instance's file; idempotent."""
        path = self._file(instance)
        try:
            with sqlite3.connect(path) as connection:
                connection.execute("CREATE TABLE IF NOT EXISTS cellhub_owner (instance TEXT PRIMARY KEY)")
                connection.execute("INSERT OR IGNORE INTO cellhub_owner VALUES (?)", (instance.name,))
            connection.close()
            os.chmod(path, 0o600)
        except sqlite3.OperationalError as error:  # locked or disk trouble: may pass on retry
            raise TransientDriverError(f"sqlite database {path}: {error}") from error
        return DatabaseCredentials(
            database=self.database_name(instance), login="", password="", host="", port=None, url=f"sqlite:///{path}"
        )

    def drop_database(self, *, instance) -> None:
        self._file(instance).unlink(missing_ok=True)

    def database_exists(self, *, instance) -> bool:
        return self._file(instance).exists()

    def list_databases(self) -> list[str]:
        return sorted(p.stem for p in self._folder().glob("*.sqlite3"))
