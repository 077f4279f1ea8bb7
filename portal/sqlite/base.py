"""Django's SQLite backend, creating the database file's folder on first connect.

The embedded default keeps its database under ``CELLHUB_VAR_DIR``; settings create no folder when imported,
so the folder is made here, where the file is opened.
"""
from pathlib import Path

from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        name = str(conn_params.get("database") or "")
        if name and name != ":memory:" and not name.startswith("file:"):
            Path(name).parent.mkdir(parents=True, exist_ok=True)
        return super().get_new_connection(conn_params)
