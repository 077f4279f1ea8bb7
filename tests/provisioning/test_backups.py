"""Backups on the local drivers: encrypted at rest, on demand and on a schedule, kept for their retention.

The helpers and fixtures at the top are shared with the restore, decommission and site tests.
"""
import io
import sqlite3
import subprocess
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.utils import timezone

from cells.choices import InstanceState, OperationKind, OperationState, Provider
from cells.errors import OperationInProgress, Refused
from cells.models import Instance, Operation
from provisioning import crypto, drivers
from provisioning.backups import backups_expire, backups_run_due, instance_backup, restorable_window
from provisioning.lifecycle import instance_signup
from provisioning.models import Backup, BackupKind, BackupReason, BackupSchedule, BackupState
from tests.factories import make_cell, make_instance

pytestmark = pytest.mark.django_db
BACKUP_KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMDAwMDA="  # a fixed Fernet key: 32 bytes, url-safe base64


@pytest.fixture(autouse=True)
def backup_key(settings):
    """Local backups are encrypted with this key; fast password hashing keeps signups cheap."""
    settings.CELLHUB = {**settings.CELLHUB, "BACKUP_KEY": BACKUP_KEY}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return BACKUP_KEY


@pytest.fixture
def run(django_capture_on_commit_callbacks, sync_tasks):
    """Call a service and run what its commit enqueues (the operation), inline."""

    def call(function, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return function(*args, **kwargs)

    return call


def signup(run, cell, name="acme") -> Instance:
    """A new customer and instance, provisioned to running on ``cell``."""
    operation = run(
        instance_signup, name=name, region=cell["reef"].region,
        new_owner={"email": f"{name}@example.com", "password": "a-long-enough-passphrase"},
    )
    instance = Instance.objects.get(pk=operation.instance_id)
    assert instance.state == InstanceState.RUNNING, Operation.objects.get(pk=operation.pk).error
    return instance


def finished(operation) -> Operation:
    operation.refresh_from_db()
    return operation


def back_up(run, instance, *kinds) -> Operation:
    """Back ``kinds`` of the instance up (one operation) and run it; it must succeed."""
    def both():
        for kind in kinds or (BackupKind.DATABASE,):
            operation = instance_backup(instance=instance, kind=kind)
        return operation

    operation = finished(run(both))
    assert operation.state == OperationState.SUCCEEDED, operation.error
    return operation


def share_path(instance) -> Path:
    share = instance.share
    return drivers.for_pool(share.pool).share_path(share)


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def postgres_connect(instance, database=None):
    credentials = drivers.for_pool(instance.database_pool).credentials(instance, database=database)
    return psycopg.connect(
        host=credentials.host, port=credentials.port, user=credentials.login, password=credentials.password,
        dbname=credentials.database, connect_timeout=5, autocommit=True,
    )


def sqlite_file(instance, database=None) -> Path:
    url = drivers.for_pool(instance.database_pool).credentials(instance, database=database).url
    return Path(url.removeprefix("sqlite:///"))


def sqlite_rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        rows = [row[0] for row in connection.execute("SELECT body FROM test_rows ORDER BY body")]
    connection.close()
    return rows


def sqlite_write(path: Path, *bodies: str) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS test_rows (body TEXT)")
        connection.executemany("INSERT INTO test_rows VALUES (?)", [(body,) for body in bodies])
    connection.close()


@pytest.fixture
def sqlite_cell():
    return make_cell(capacity=3)


@pytest.fixture
def postgres_cell():
    return make_cell(capacity=3, database_provider=Provider.POSTGRES)


# ---- encryption ----------------------------------------------------------------------------------------


def test_a_postgres_backup_is_encrypted_and_readable_only_with_its_key(run, postgres_cell, settings):
    instance = signup(run, postgres_cell)
    with postgres_connect(instance) as connection:
        connection.execute("CREATE TABLE test_rows (body text)")
        connection.execute("INSERT INTO test_rows VALUES ('plaintext-row-7f3a9c')")
    back_up(run, instance)
    backup = Backup.objects.get(instance=instance, kind=BackupKind.DATABASE)
    path = crypto.local_file(backup.location)
    stored = path.read_bytes()

    assert backup.state == BackupState.SUCCEEDED and backup.encrypted_with == crypto.key_id(BACKUP_KEY)
    assert backup.checksum == crypto.sha256_file(path) and backup.size_bytes == len(stored)
    assert path.stat().st_mode & 0o777 == 0o600
    assert b"plaintext-row-7f3a9c" not in stored and b"CREATE TABLE" not in stored and b"PGDMP" not in stored

    # With the key, it is a real pg_dump archive holding the row.
    plain = io.BytesIO()
    crypto.decrypt_to(path, plain)
    assert plain.getvalue().startswith(b"PGDMP")
    pg_restore = drivers.for_pool(instance.database_pool).binary("pg_restore")
    script = subprocess.run([pg_restore, "--file=-"], input=plain.getvalue(), capture_output=True, check=True).stdout
    assert b"plaintext-row-7f3a9c" in script

    # With another key it cannot be read: neither through the hub nor by Fernet itself.
    other = Fernet.generate_key().decode()
    settings.CELLHUB = {**settings.CELLHUB, "BACKUP_KEY": other}
    with pytest.raises(crypto.BackupKeyError, match=f"encrypted with key {crypto.key_id(BACKUP_KEY)}"):
        crypto.decrypt_to(path, io.BytesIO())
    frame = stored[len(crypto.MAGIC) + 9:]
    token = frame[4:4 + int.from_bytes(frame[:4], "big")]
    with pytest.raises(InvalidToken):
        Fernet(other).decrypt(token)
    assert Fernet(BACKUP_KEY).decrypt(token)  # the same token opens with the right key


def test_a_sqlite_backup_hides_a_known_row_and_detects_tampering(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    sqlite_write(sqlite_file(instance), "plaintext-row-5e1d")
    back_up(run, instance)
    backup = Backup.objects.get(instance=instance)
    path = crypto.local_file(backup.location)
    assert b"plaintext-row-5e1d" not in path.read_bytes()
    plain = io.BytesIO()
    crypto.decrypt_to(path, plain)
    assert b"plaintext-row-5e1d" in plain.getvalue() and plain.getvalue().startswith(b"SQLite format 3")

    damaged = bytearray(path.read_bytes())
    damaged[-10] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(crypto.BackupCorrupt, match="does not authenticate"):
        crypto.decrypt_to(path, io.BytesIO())
    path.write_bytes(bytes(damaged[:-200]))
    with pytest.raises(crypto.BackupCorrupt, match="cut short"):
        crypto.decrypt_to(path, io.BytesIO())


def test_without_a_key_the_backup_fails_naming_the_variable(run, sqlite_cell, settings):
    instance = signup(run, sqlite_cell)
    settings.CELLHUB = {**settings.CELLHUB, "BACKUP_KEY": ""}
    operation = finished(run(instance_backup, instance=instance, kind=BackupKind.DATABASE))
    assert operation.state == OperationState.FAILED and "CELLHUB_BACKUP_KEY" in operation.error
    backup = Backup.objects.get(operation=operation)
    assert backup.state == BackupState.FAILED and "CELLHUB_BACKUP_KEY" in backup.error
    assert not list(Path(settings.CELLHUB["VAR_DIR"]).glob("backups/**/*.enc*"))
    settings.CELLHUB = {**settings.CELLHUB, "BACKUP_KEY": "not-a-key"}
    with pytest.raises(crypto.BackupKeyError, match="CELLHUB_BACKUP_KEY is not a Fernet key"):
        crypto.backup_key()


# ---- on demand -----------------------------------------------------------------------------------------


def test_database_then_files_make_one_operation_with_both_backups(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    write_files(share_path(instance), {"logs/a.txt": b"alpha", "b.bin": bytes(range(256))})
    operation = back_up(run, instance, BackupKind.DATABASE, BackupKind.FILES)
    assert operation.params["kinds"] == ["database", "files"] and operation.done_step_names == ["database", "files"]
    files = Backup.objects.get(operation=operation, kind=BackupKind.FILES)
    database = Backup.objects.get(operation=operation, kind=BackupKind.DATABASE)
    assert files.details["files"] == 2 and files.details["bytes"] == 5 + 256
    assert files.source == instance.share.name and database.source == sqlite_file(instance).stem
    assert database.taken_at.microsecond == 0 and database.started_at <= database.taken_at
    assert database.expires_at == database.finished_at + timedelta(days=30)
    assert restorable_window(instance=instance) == (database.taken_at, database.taken_at)
    assert Operation.objects.filter(instance=instance, kind=OperationKind.BACKUP).count() == 1


def test_a_running_backup_is_returned_for_its_kind_and_blocks_another(sqlite_cell, run):
    instance = signup(run, sqlite_cell)
    operation = instance_backup(instance=instance, kind=BackupKind.DATABASE)
    Operation.objects.filter(pk=operation.pk).update(state=OperationState.RUNNING)
    assert instance_backup(instance=instance, kind=BackupKind.DATABASE) == operation
    with pytest.raises(OperationInProgress, match=f"operation #{operation.pk}"):
        instance_backup(instance=instance, kind=BackupKind.FILES)


@pytest.mark.parametrize("state", [InstanceState.DECOMMISSIONED, InstanceState.DECOMMISSIONING, InstanceState.PENDING])
def test_a_backup_is_refused_naming_the_state(state):
    instance = make_instance(state=state)
    with pytest.raises(Refused, match=f"is {state};"):
        instance_backup(instance=instance, kind=BackupKind.DATABASE)
    with pytest.raises(Refused, match="unknown backup kind"):
        instance_backup(instance=instance, kind="everything")
    assert not Operation.objects.filter(instance=instance).exists()


# ---- schedule and retention -------------------------------------------------------------------------------


def test_the_scheduled_pass_starts_each_due_backup_once(run, sqlite_cell, settings):
    first, second = signup(run, sqlite_cell, "first"), signup(run, sqlite_cell, "second")
    idle = signup(run, sqlite_cell, "idle")
    Instance.objects.filter(pk=idle.pk).update(state=InstanceState.STOPPED)

    started = run(backups_run_due)
    operations = Operation.objects.filter(pk__in=started)
    assert sorted(op.instance.name for op in operations) == ["first", "second"]
    assert all(op.state == OperationState.SUCCEEDED and op.params["reason"] == "scheduled" for op in operations)
    assert Backup.objects.filter(reason=BackupReason.SCHEDULED, state=BackupState.SUCCEEDED).count() == 4
    assert run(backups_run_due) == []  # nothing is due twice
    assert Operation.objects.filter(kind=OperationKind.BACKUP).count() == 2

    # Staff set one instance to back its database up every hour: only that is due an hour later.
    BackupSchedule.objects.filter(instance=first).update(database_every_hours=1)
    BackupSchedule.objects.filter(instance=first).update(next_database_at=timezone.now() + timedelta(hours=1))
    later = timezone.now() + timedelta(hours=1, minutes=1)
    (again,) = run(backups_run_due, now=later)
    again = Operation.objects.get(pk=again)
    assert again.instance == first and again.params["kinds"] == ["database"]
    assert run(backups_run_due, now=later) == []
    schedule = BackupSchedule.objects.get(instance=second)
    assert schedule.next_files_at > later
    assert schedule.database_every_hours == settings.CELLHUB["BACKUP_FULL_EVERY_HOURS"]


def test_retention_deletes_expired_backups_but_keeps_the_newest(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    old, new = back_up(run, instance, BackupKind.DATABASE, BackupKind.FILES), back_up(run, instance)
    old_database = Backup.objects.get(operation=old, kind=BackupKind.DATABASE)
    old_files = Backup.objects.get(operation=old, kind=BackupKind.FILES)
    new_database = Backup.objects.get(operation=new)
    paths = {b.pk: crypto.local_file(b.location) for b in (old_database, old_files, new_database)}
    assert all(path.exists() for path in paths.values())

    assert backups_expire(now=timezone.now() + timedelta(days=29)) == 0
    assert backups_expire(now=timezone.now() + timedelta(days=31)) == 1
    old_database.refresh_from_db()
    assert old_database.state == BackupState.DELETED and old_database.deleted_at and not paths[old_database.pk].exists()
    # The newest of each kind stays whatever its age: the files backup is the only one, the newer database one too.
    assert paths[old_files.pk].exists() and paths[new_database.pk].exists()
    assert restorable_window(instance=instance) == (new_database.taken_at, new_database.taken_at)
    assert backups_expire(now=timezone.now() + timedelta(days=400)) == 0
