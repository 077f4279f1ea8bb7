"""The server's data: notes in its database (SQLite or PostgreSQL), files in its share, and its schema by version.

A connection is opened per call and closed after it, so a database that went away and came back is simply used
again, and "reachable" means reachable now.
"""
from __future__ import annotations

import os
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

# (first version that has it, what it does, its SQL per dialect). The schema level of a version is the number of
# migrations whose first version is at or below it; a server never runs on a level higher than its own.
MIGRATIONS: list[tuple[tuple[int, ...], str, dict[str, str]]] = [
    (
        (0,),
        "notes",
        {
            "sqlite": "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, "
            "created_at TEXT NOT NULL)",
            "postgres": "CREATE TABLE IF NOT EXISTS notes (id SERIAL PRIMARY KEY, body TEXT NOT NULL, "
            "created_at TEXT NOT NULL)",
        },
    ),
    (
        (2026, 5),
        "notes.author",
        {
            "sqlite": "ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT ''",
            "postgres": "ALTER TABLE notes ADD COLUMN IF NOT EXISTS author TEXT NOT NULL DEFAULT ''",
        },
    ),
]
SCHEMA_TABLE = "refserver_schema"


class StoreError(Exception):
    """The database or the share cannot be used; the message says why in plain words."""


def version_key(version: str) -> tuple[int, ...]:
    """``"2026.5.0"`` → ``(2026, 5, 0)``; the numbers of a version, compared as a tuple."""
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)


def schema_level(version: str) -> int:
    """How many migrations a server of ``version`` applies."""
    return sum(1 for first, _name, _sql in MIGRATIONS if version_key(version) >= first)


@dataclass
class Note:
    id: int
    body: str
    created_at: str
    author: str = ""


class Database:
    """The instance's own database, reached with its own URL (login and password included for PostgreSQL)."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        if parsed.scheme == "sqlite":
            self.dialect = "sqlite"
            self.path = unquote(parsed.path)
        elif parsed.scheme in {"postgres", "postgresql"}:
            self.dialect = "postgres"
        else:
            raise StoreError(f"unsupported database URL scheme {parsed.scheme!r}")
        self.url = url

    @contextmanager
    def connect(self):
        try:
            if self.dialect == "sqlite":
                if not os.path.exists(self.path):
                    raise StoreError("its database file does not exist")
                connection = sqlite3.connect(self.path, timeout=5)
            else:
                import psycopg  # only a PostgreSQL-backed server needs it

                connection = psycopg.connect(self.url, connect_timeout=5)
        except StoreError:
            raise
        except Exception as error:
            raise StoreError(f"its database does not answer: {error.__class__.__name__}") from error
        try:
            yield connection
            connection.commit()
        except StoreError:
            raise
        except Exception as error:
            connection.rollback()
            raise StoreError(f"its database failed: {error.__class__.__name__}: {error}") from error
        finally:
            connection.close()

    def _sql(self, text: str) -> str:
        return text if self.dialect == "sqlite" else text.replace("?", "%s")

    def level(self, connection) -> int:
        connection.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (level INTEGER NOT NULL, version TEXT NOT NULL)")
        row = connection.execute(f"SELECT level FROM {SCHEMA_TABLE}").fetchone()
        return row[0] if row else 0

    def migrate(self, version: str) -> int:
        """Apply the migrations ``version`` has and the database lacks; return the level. Raises ``StoreError``
        when the database is at a level this version does not know (a newer server ran on it)."""
        wanted = schema_level(version)
        with self.connect() as connection:
            level = self.level(connection)
            if level > wanted:
                raise StoreError(
                    f"its database has schema level {level}, newer than version {version} knows ({wanted}): "
                    "restore the backup taken before the upgrade"
                )
            for _first, _name, sql in MIGRATIONS[level:wanted]:
                connection.execute(sql[self.dialect])
            connection.execute(f"DELETE FROM {SCHEMA_TABLE}")
            connection.execute(self._sql(f"INSERT INTO {SCHEMA_TABLE} (level, version) VALUES (?, ?)"),
                               (wanted, version))
        return wanted

    def check(self, version: str) -> None:
        """Raise ``StoreError`` unless the database answers with the schema level of ``version``."""
        with self.connect() as connection:
            level = self.level(connection)
        if level != schema_level(version):
            raise StoreError(f"its database has schema level {level}, version {version} needs {schema_level(version)}")

    def notes(self, level: int) -> list[Note]:
        columns = "id, body, created_at" + (", author" if level >= 2 else "")
        with self.connect() as connection:
            rows = connection.execute(f"SELECT {columns} FROM notes ORDER BY id").fetchall()
        return [Note(*row) for row in rows]

    def add_note(self, body: str, *, author: str, level: int) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        with self.connect() as connection:
            if level >= 2:
                connection.execute(self._sql("INSERT INTO notes (body, created_at, author) VALUES (?, ?, ?)"),
                                   (body, now, author))
            else:
                connection.execute(self._sql("INSERT INTO notes (body, created_at) VALUES (?, ?)"), (body, now))


class Share:
    """The instance's share: a folder. Files are kept flat, by a safe name."""

    def __init__(self, path: str):
        self.path = Path(path)

    def check(self) -> None:
        if not self.path.is_dir():
            raise StoreError("its share is not mounted")
        if not os.access(self.path, os.W_OK):
            raise StoreError("its share is not writable")

    def files(self) -> list[tuple[str, int]]:
        self.check()
        return sorted((p.name, p.stat().st_size) for p in self.path.iterdir() if p.is_file())

    @staticmethod
    def safe_name(name: str) -> str:
        """The file's own name (no folders), without leading dots; ValueError when nothing is left."""
        cleaned = os.path.basename(name.replace("\\", "/")).lstrip(".").strip()
        if not cleaned:
            raise ValueError("the file needs a name")
        return cleaned

    def save(self, name: str, content: bytes) -> str:
        self.check()
        name = self.safe_name(name)
        partial = self.path / f".{name}.partial"
        partial.write_bytes(content)
        partial.replace(self.path / name)
        return name

    def read(self, name: str) -> bytes:
        path = self.path / self.safe_name(name)
        if not path.is_file():
            raise FileNotFoundError(name)
        return path.read_bytes()
