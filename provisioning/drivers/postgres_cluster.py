"""PostgreSQL clusters the hub runs on this machine: created, started and stopped, archiving WAL, backed up whole,
and recovered to a point in time into a temporary cluster.

Every program runs as the ``postgres`` OS user (PostgreSQL refuses root); the hub keeps each pool's cluster under
``var/postgres/pool<id>/``::

    data/            the cluster (initdb --wal-segsize=1: 1 MB segments, so a short archive_timeout stays cheap)
    archive/         WAL segments, copied there by archive_command as each one is finished
    base/<label>/    base backups (pg_basebackup, plain format, a backup_manifest with SHA-256 per file)
    restore-<name>/  a temporary cluster while a point-in-time restore runs (always removed afterwards)
    log              the server's log

Ports come from ``CELLHUB["POSTGRES_PORTS"]`` (``first-last``), handed out under a file lock to one owner each
(a file ``var/postgres/ports/<port>`` names it) and only when nothing else listens there, so two clusters
never collide. Nothing here touches the hub's database.
"""
from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psycopg
from django.conf import settings

from provisioning.drivers.base import PermanentDriverError, TransientDriverError
from provisioning.drivers.local_lock import file_lock
from provisioning.drivers.local_paths import var_path

OS_USER = "postgres"
ADMIN = "postgres"


def binary(name: str, bin_dir: str | None = None) -> str:
    """The path of a PostgreSQL program: ``bin_dir``, the PATH, or the newest installed under /usr/lib/postgresql.

    Raises ``PermanentDriverError`` naming the package to install when it is nowhere.
    """
    if bin_dir:
        candidate = Path(bin_dir) / name
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
        f"{name} is not installed on this worker: install the postgresql package (server and client programs)"
    )


def as_postgres() -> dict:
    """``subprocess`` arguments that run a program as the ``postgres`` OS user (when the hub runs as root)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        raise PermanentDriverError(f"there is no {OS_USER} OS user to run PostgreSQL clusters as") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _chown_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(OS_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def run(command: list[str], *, what: str, timeout: float = 600, env: dict | None = None, check: bool = True,
        **kwargs) -> subprocess.CompletedProcess:
    """Run ``command`` as the postgres user; a non-zero exit raises ``PermanentDriverError`` with its messages."""
    environment = {key: value for key, value in os.environ.items() if key not in {"PGPASSWORD", "PGPASSFILE"}}
    environment.update(env or {})
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, env=environment, cwd="/",
                              **as_postgres(), **kwargs)
    except subprocess.TimeoutExpired as error:
        raise TransientDriverError(f"{what} did not finish within {timeout:.0f} s") from error
    if check and done.returncode != 0:
        message = (done.stderr or b"").decode(errors="replace").strip()[-2000:] or f"exit status {done.returncode}"
        raise PermanentDriverError(f"{what} failed: {message}")
    return done


def root() -> Path:
    """``var/postgres``: root-owned, traversable by the postgres user (each cluster's own folder is its)."""
    path = var_path("postgres")
    path.chmod(0o711)
    return path


# -- ports ------------------------------------------------------------------------------------------------------


def port_range() -> range:
    first, _, last = str(settings.CELLHUB["POSTGRES_PORTS"]).partition("-")
    return range(int(first), int(last or first) + 1)


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_allocate(owner: str) -> int:
    """A port for ``owner`` (e.g. ``pool7``): the one it holds already, else the lowest free one of the range.

    Raises ``PermanentDriverError`` when the range is used up.
    """
    folder = root() / "ports"
    folder.mkdir(exist_ok=True)
    with file_lock(root() / "ports.lock"):
        for held in folder.iterdir():
            if held.read_text().strip() == owner:
                return int(held.name)
        for port in port_range():
            marker = folder / str(port)
            if not marker.exists() and _free(port):
                marker.write_text(owner)
                return port
    raise PermanentDriverError(f"no free port left in CELLHUB_POSTGRES_PORTS ({settings.CELLHUB['POSTGRES_PORTS']})")


def port_release(owner: str) -> None:
    """Give back every port ``owner`` holds; none is fine."""
    folder = root() / "ports"
    if not folder.is_dir():
        return
    with file_lock(root() / "ports.lock"):
        for held in folder.iterdir():
            if held.read_text().strip() == owner:
                held.unlink(missing_ok=True)


# -- a cluster --------------------------------------------------------------------------------------------------


class Cluster:
    """One PostgreSQL cluster in ``folder`` (its ``data/``), answering on 127.0.0.1:``port`` only.

    The admin (``postgres``) logs in with ``password`` over TCP (scram-sha-256); there is no Unix socket.
    """

    def __init__(self, *, folder: Path, port: int, password: str, bin_dir: str | None = None):
        self.folder = folder
        self.data = folder / "data"
        self.archive = folder / "archive"
        self.bases = folder / "base"
        self.log = folder / "log"
        self.port = port
        self.password = password
        self.bin_dir = bin_dir

    def binary(self, name: str) -> str:
        return binary(name, self.bin_dir)

    def environment(self) -> dict:
        return {"PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}

    def connect(self, dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=ADMIN, password=self.password, dbname=dbname,
                               connect_timeout=10, **kwargs)

    # creation and life

    def _prepare_folder(self) -> None:
        root()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        _chown_to_postgres(self.folder)
        if "'" in str(self.folder) or '"' in str(self.folder):
            raise PermanentDriverError(f"the cluster folder {self.folder} must not contain quotes")
        if run(["test", "-w", str(self.folder)], what="reaching the cluster folder", check=False).returncode:
            raise PermanentDriverError(
                f"the {OS_USER} OS user cannot reach {self.folder}: give every folder above it o+x (CELLHUB_VAR_DIR)"
            )

    def settings(self, *, archive: bool) -> str:
        """postgresql.conf lines: TCP on 127.0.0.1 only, and (``archive``) WAL archiving into ``archive/``."""
        archive_timeout = int(settings.CELLHUB["POSTGRES_ARCHIVE_TIMEOUT"])
        target = f"{self.archive}/%f"
        # Idempotent, as PostgreSQL asks: a segment archived already (a crash before it was noted) is accepted
        # when identical; a new one appears whole (copied aside, then renamed).
        command = (f'if [ -f "{target}" ]; then cmp -s "%p" "{target}"; '
                   f'else cp "%p" "{target}.tmp" && mv "{target}.tmp" "{target}"; fi')
        lines = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            "unix_socket_directories = ''",
            "shared_buffers = '32MB'",
            "max_connections = 50",
            "wal_level = replica",
            "max_wal_senders = 4",
        ]
        if archive:
            lines += ["archive_mode = on", f"archive_command = '{command}'", f"archive_timeout = {archive_timeout}"]
        else:
            lines += ["archive_mode = off"]
        return "\n".join(lines) + "\n"

    def create(self) -> None:
        """initdb (once) with archiving on; safe to repeat: a cluster that exists is kept as it is."""
        self._prepare_folder()
        if (self.data / "PG_VERSION").exists():
            return
        for folder in (self.archive, self.bases):
            folder.mkdir(exist_ok=True)
            folder.chmod(0o700)
            _chown_to_postgres(folder)
        partial = self.folder / "data.partial"
        if partial.exists():
            shutil.rmtree(partial)
        password_file = self.folder / "pwfile"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        _chown_to_postgres(password_file)
        try:
            run([self.binary("initdb"), "-D", str(partial), "-U", ADMIN, f"--pwfile={password_file}",
                 "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "--wal-segsize=1", "--encoding=UTF8",
                 "--locale=C.UTF-8", "--no-sync"], what="initdb")
        finally:
            password_file.unlink(missing_ok=True)
        with open(partial / "postgresql.conf", "a") as conf:
            conf.write("\n# Cell Hub: a managed pool\n" + self.settings(archive=True))
        partial.rename(self.data)

    def running(self) -> bool:
        done = run([self.binary("pg_ctl"), "-D", str(self.data), "status"], what="pg_ctl status", check=False)
        return done.returncode == 0

    def start(self, *, timeout: int = 120) -> None:
        """Start the cluster (already running is fine) and wait until it takes connections."""
        if self.running():
            return
        done = run([self.binary("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(timeout),
                    "start"], what="pg_ctl start", check=False, timeout=timeout + 30)
        if done.returncode != 0:
            raise PermanentDriverError(f"cluster {self.folder.name} did not start: {self.log_tail()}")

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the cluster; not running is fine."""
        if self.data.exists() and self.running():
            run([self.binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "120", "stop"],
                what="pg_ctl stop", check=False, timeout=180)

    def remove(self) -> None:
        """Stop (immediately) and delete the whole folder; absent is fine."""
        if self.folder.exists():
            self.stop(mode="immediate")
            shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # archiving

    def archive_now(self, *, timeout: float = 60) -> None:
        """Make everything committed so far restorable: commit a transaction (so recovery always finds a commit
        after any earlier target time), finish the WAL segment, and wait until it is in ``archive/``."""
        with self.connect(autocommit=True) as connection:
            connection.execute("BEGIN")
            connection.execute("SELECT pg_current_xact_id()")
            connection.execute("COMMIT")
            segment = connection.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
            deadline = time.monotonic() + timeout
            while not (self.archive / segment).exists():
                if time.monotonic() > deadline:
                    failed = connection.execute("SELECT last_failed_wal, last_failed_time FROM pg_stat_archiver")
                    raise TransientDriverError(f"WAL segment {segment} not archived within {timeout:.0f} s "
                                               f"(last failure: {failed.fetchone()})")
                time.sleep(0.1)

    def latest_archived(self) -> datetime | None:
        """When the newest archived WAL segment was written: everything committed before it is restorable."""
        newest = max((path.stat().st_mtime for path in self.archive.glob("0*") if not path.name.endswith(".tmp")),
                     default=None)
        return None if newest is None else datetime.fromtimestamp(newest).astimezone()

    # base backups

    def base_backup(self, label: str) -> tuple[Path, int, str]:
        """``pg_basebackup`` (plain, WAL streamed in, SHA-256 manifest) into ``base/<label>/``, verified with
        ``pg_verifybackup``; returns its folder, size and the SHA-256 of its manifest (the backup's identity).
        The same label finds the finished backup."""
        target = self.bases / label
        if not (target / "backup_manifest").exists():
            partial = self.bases / f"{label}.partial"
            if partial.exists():
                shutil.rmtree(partial)
            run([self.binary("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", ADMIN, "-D",
                 str(partial), "-Fp", "-X", "stream", "--checkpoint=fast", "--manifest-checksums=SHA256",
                 "--no-password"], what="pg_basebackup", env=self.environment(), timeout=3600)
            partial.rename(target)
        return target, folder_size(target), self.verify_base(target)

    def verify_base(self, folder: Path) -> str:
        """Check every file of a base backup against its manifest (``pg_verifybackup``) and return the manifest's
        SHA-256. Raises ``PermanentDriverError`` naming what differs."""
        manifest = folder / "backup_manifest"
        if not manifest.is_file():
            raise PermanentDriverError(f"base backup {folder} has no backup_manifest")
        run([self.binary("pg_verifybackup"), "-q", "-w", str(folder / "pg_wal"), str(folder)],
            what=f"pg_verifybackup of {folder.name}")
        return sha256_file(manifest)

    # recovery

    @contextmanager
    def recovered(self, *, base: Path, point_in_time: datetime, name: str) -> Iterator[Cluster]:
        """A temporary cluster made from ``base`` and this cluster's WAL archive, recovered to ``point_in_time``
        and promoted; yields it, then stops it and deletes its folder and port whatever happened."""
        owner = f"{self.folder.name}-{name}"
        temporary = Cluster(folder=self.folder / f"restore-{name}", port=port_allocate(owner),
                            password=self.password, bin_dir=self.bin_dir)
        try:
            temporary.remove()
            temporary._prepare_folder()
            run(["cp", "-a", str(base), str(temporary.data)], what="copying the base backup", timeout=3600)
            (temporary.data / "backup_manifest").unlink(missing_ok=True)
            target = point_in_time.isoformat(sep=" ")
            with open(temporary.data / "postgresql.auto.conf", "a") as conf:
                conf.write(temporary.settings(archive=False) + "\n".join([
                    f"restore_command = 'cp \"{self.archive}/%f\" \"%p\"'",
                    f"recovery_target_time = '{target}'",
                    "recovery_target_action = 'promote'",
                    "recovery_target_inclusive = on",
                    "hot_standby = off",  # nothing connects before the target is reached and the cluster promoted
                ]) + "\n")
            (temporary.data / "recovery.signal").touch()
            for path in (temporary.data / "recovery.signal", temporary.data / "postgresql.auto.conf"):
                _chown_to_postgres(path)
            try:
                temporary.start(timeout=1800)
            except PermanentDriverError:
                raise PermanentDriverError(
                    f"recovery to {target} failed (is the WAL archive whole?): {temporary.log_tail()}"
                ) from None
            temporary.wait_promoted()
            yield temporary
        finally:
            temporary.remove()
            port_release(owner)

    def wait_promoted(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect() as connection:
                    if not connection.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        return
            except psycopg.OperationalError:
                if not self.running():
                    raise PermanentDriverError(f"the recovering cluster stopped: {self.log_tail()}") from None
            if time.monotonic() > deadline:
                raise TransientDriverError(f"the recovering cluster was not promoted within {timeout:.0f} s")
            time.sleep(0.2)


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
