"""Decommission: stop → archive → final backup → drop → scrub → share available → DNS gone → decommissioned.

Each step is idempotent; a failure at any step leaves a consistent state that a retry finishes, and a
scrubbed share is indistinguishable from a fresh one to its next instance.
"""
import hashlib
import io
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.core import mail
from django.utils import timezone

from cells.choices import InstanceState, OperationKind, OperationState, Provider, ShareStatus
from cells.errors import IllegalTransition, OperationInProgress, Refused
from cells.models import Operation, Share
from provisioning import crypto, drivers, faults
from provisioning.backups import backups_expire, instance_backup, instance_decommission, instance_restore
from provisioning.models import Backup, BackupKind, BackupReason, BackupSchedule, BackupState, Restore
from provisioning.operations import operation_retry
from tests.factories import make_cell, make_instance
from tests.provisioning import test_backups as shared
from tests.provisioning.test_backups import (
    BACKUP_KEY,
    back_up,
    finished,
    postgres_connect,
    share_path,
    signup,
    sqlite_file,
    sqlite_write,
    write_files,
)

pytestmark = pytest.mark.django_db
# Fixtures shared with the backup tests (pytest finds them by name in this module).
backup_key = shared.backup_key
run = shared.run
sqlite_cell = shared.sqlite_cell
STEPS = [
    "stop_compute", "archive_share", "final_backup", "drop_database", "scrub_share", "return_share", "remove_dns",
    "mark_decommissioned",
]
FILES = {
    "config.json": b'{"tenant": "old"}',
    "packages/app-1.0.nupkg": bytes(range(256)) * 40,
    "logs/2026/task.log": b"deployed\n" * 100,
    ".hidden": b"dotfile",
}


def _listing(root: Path) -> dict[str, str]:
    """Every entry under ``root``: path → SHA-256 of a file, "dir" for a folder (independent of the driver)."""
    return {
        path.relative_to(root).as_posix(): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
    }


def _decommission(run, instance, name=None) -> Operation:
    return finished(run(instance_decommission, instance=instance, confirm_name=name or instance.name))


def test_decommission_on_postgres_keeps_an_archive_and_a_final_backup_and_leaves_nothing_else(run, tmp_path):
    cell = make_cell(capacity=1, database_provider=Provider.POSTGRES)
    instance = signup(run, cell)
    share = instance.share
    with postgres_connect(instance) as connection:
        connection.execute("CREATE TABLE test_rows (body text)")
        connection.execute("INSERT INTO test_rows VALUES ('final-row-93b1')")
    write_files(share_path(instance), FILES)
    before = _listing(share_path(instance))

    operation = _decommission(run, instance)
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert operation.done_step_names == STEPS and operation.params["share_id"] == share.pk
    instance.refresh_from_db()
    share.refresh_from_db()
    assert instance.state == InstanceState.DECOMMISSIONED
    assert (share.status, share.instance_id, share.firewall_address) == (ShareStatus.AVAILABLE, None, "")

    storage, database = drivers.for_pool(cell["storage"]), drivers.for_pool(cell["database"])
    assert storage.share_listing(share=share) == {} and storage.exports() == {}
    assert not database.database_exists(instance=instance) and not database.role_exists(instance=instance)
    assert not drivers.for_pool(cell["compute"]).status(instance=instance).exists
    assert drivers.for_dns(cell["reef"].region).lookup(name=instance.name) is None
    assert not BackupSchedule.objects.filter(instance=instance, enabled=True).exists()

    # The archive: in deep storage, encrypted, its checksum recorded; unpacked it gives back every file.
    archive = Backup.objects.get(operation=operation, reason=BackupReason.ARCHIVE)
    path = crypto.local_file(archive.location)
    assert path.parent.name == "archive" and archive.checksum == crypto.sha256_file(path)
    assert archive.encrypted_with == crypto.key_id(BACKUP_KEY) and archive.details["files"] == len(FILES)
    assert archive.expires_at > timezone.now() + timedelta(days=89)
    assert b"deployed" not in path.read_bytes()
    storage.unpack_archive(location=archive.location, target=tmp_path / "unpacked")
    assert _listing(tmp_path / "unpacked") == before

    # The final database backup holds the last rows.
    final = Backup.objects.get(operation=operation, reason=BackupReason.FINAL)
    assert final.state == BackupState.SUCCEEDED and final.kind == BackupKind.DATABASE
    plain = io.BytesIO()
    crypto.decrypt_to(crypto.local_file(final.location), plain)
    script = subprocess.run(
        [database.binary("pg_restore"), "--file=-"], input=plain.getvalue(), capture_output=True, check=True
    ).stdout
    assert b"final-row-93b1" in script
    assert any("was decommissioned" in message.subject for message in mail.outbox)


def test_a_scrubbed_share_is_indistinguishable_from_a_fresh_one_to_its_next_instance(run):
    cell = make_cell(capacity=1, database_provider=Provider.POSTGRES)
    fresh_cell = make_cell(capacity=1, database_provider=Provider.POSTGRES)
    old = signup(run, cell, "old-tenant")
    with postgres_connect(old) as connection:
        connection.execute("CREATE TABLE secrets (body text)")
        connection.execute("INSERT INTO secrets VALUES ('old tenant data')")
    write_files(share_path(old), FILES)
    (share_path(old) / "empty-folder").mkdir()
    old_share = old.share
    assert _decommission(run, old).state == OperationState.SUCCEEDED

    new = signup(run, cell, "new-tenant")  # the pool has one share: the scrubbed one
    reference = signup(run, fresh_cell, "reference")  # a share never used before
    assert new.share.pk == old_share.pk and reference.share.pk != old_share.pk

    def seen(instance):
        share = Share.objects.get(pk=instance.share.pk)
        storage = drivers.for_pool(share.pool)
        with postgres_connect(instance) as connection:
            tables = connection.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            ).fetchone()[0]
        return {
            "listing": storage.share_listing(share=share),
            "mode": oct(storage.share_path(share).stat().st_mode),
            "exports": {("THE SHARE" if name == share.name else name): address
                        for name, address in storage.exports().items()},
            "row": (share.status, share.firewall_address, share.endpoint.startswith("file://")),
            "tables": tables,
        }

    assert seen(new) == seen(reference) == {
        "listing": {}, "mode": seen(reference)["mode"], "exports": {"THE SHARE": "127.0.0.1"},
        "row": (ShareStatus.ASSIGNED, "127.0.0.1", True),
        "tables": 2,  # the server's own (notes, refserver_schema): the old tenant's "secrets" went with its database
    }


EXPECTED_SHARE_STATUS = {
    "stop_compute": ShareStatus.ASSIGNED,
    "archive_share": ShareStatus.ASSIGNED,
    "final_backup": ShareStatus.ARCHIVING,
    "drop_database": ShareStatus.ARCHIVING,
    "scrub_share": ShareStatus.ARCHIVING,
    "return_share": ShareStatus.SCRUBBING,
    "remove_dns": ShareStatus.AVAILABLE,  # the order: the share returns before DNS goes
    "mark_decommissioned": ShareStatus.AVAILABLE,
}


@pytest.mark.parametrize("step", STEPS)
def test_a_failure_at_any_step_stops_there_consistently_and_a_retry_finishes(run, sqlite_cell, staff_user, step):
    instance = signup(run, sqlite_cell)
    share = instance.share
    write_files(share_path(instance), {"a.txt": b"alpha"})
    faults.arm(f"decommission.{step}.before", "permanent")

    operation = _decommission(run, instance)
    assert operation.state == OperationState.FAILED
    assert f"injected permanent fault at decommission.{step}.before" in operation.error
    assert f"stopped at {step}" in operation.error
    assert operation.done_step_names == STEPS[: STEPS.index(step)]
    instance.refresh_from_db()
    share.refresh_from_db()
    assert instance.state == InstanceState.DECOMMISSIONING
    assert share.status == EXPECTED_SHARE_STATUS[step]
    assert (share.instance_id is not None) == (share.status == ShareStatus.ASSIGNED)
    (alert,) = [message for message in mail.outbox if staff_user.email in message.to]
    assert f"failed at {step}" in alert.subject and "injected permanent fault" in alert.body

    run(operation_retry, operation=operation)
    operation.refresh_from_db()
    instance.refresh_from_db()
    share.refresh_from_db()
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert operation.done_step_names == STEPS and operation.attempts == 2
    assert instance.state == InstanceState.DECOMMISSIONED and share.status == ShareStatus.AVAILABLE
    assert drivers.for_pool(share.pool).share_listing(share=share) == {}
    assert Backup.objects.filter(operation=operation, state=BackupState.SUCCEEDED).count() == 2  # archive + final
    assert not drivers.for_pool(sqlite_cell["database"]).database_exists(instance=instance)


@pytest.mark.parametrize("step", ["archive_share", "drop_database", "scrub_share", "return_share"])
def test_a_crash_after_a_step_repeats_it_harmlessly(run, sqlite_cell, step):
    instance = signup(run, sqlite_cell)
    faults.arm(f"decommission.{step}.after", "permanent")  # the step did its work but was not recorded
    operation = _decommission(run, instance)
    assert operation.state == OperationState.FAILED
    run(operation_retry, operation=operation)
    operation.refresh_from_db()
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert Backup.objects.filter(operation=operation, reason=BackupReason.ARCHIVE).count() == 1
    assert Share.objects.get(pk=operation.params["share_id"]).status == ShareStatus.AVAILABLE


def test_decommission_drops_the_databases_a_restore_kept(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    original = sqlite_file(instance)
    sqlite_write(original, "row")
    point = Backup.objects.get(operation=back_up(run, instance)).taken_at
    assert finished(run(instance_restore, instance=instance, point_in_time=point)).state == OperationState.SUCCEEDED
    restored = sqlite_file(instance, Restore.objects.get().new_database)
    assert original.exists() and restored.exists()

    operation = _decommission(run, instance)
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert Backup.objects.get(operation=operation, reason=BackupReason.FINAL).source == restored.stem
    assert not original.exists() and not restored.exists()
    assert Restore.objects.get().old_dropped_at is not None


@pytest.mark.parametrize("typed", ["", "acm", "ACME", "acme-2", "other"])
def test_decommission_needs_the_instance_name_typed_and_a_wrong_one_changes_nothing(run, sqlite_cell, typed):
    instance = signup(run, sqlite_cell)
    with pytest.raises(Refused, match="type the instance's name, acme, to confirm") as refusal:
        instance_decommission(instance=instance, confirm_name=typed)
    assert refusal.value.field == "confirm_name"
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING and instance.share.status == ShareStatus.ASSIGNED
    assert not Operation.objects.filter(kind=OperationKind.DECOMMISSION).exists()


def test_decommission_waits_for_other_work_and_refuses_a_decommissioned_instance(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    backup = instance_backup(instance=instance, kind=BackupKind.DATABASE)  # queued, not run
    with pytest.raises(OperationInProgress, match=f"a backup of acme is queued \\(operation #{backup.pk}\\)"):
        instance_decommission(instance=instance, confirm_name="acme")
    Operation.objects.filter(pk=backup.pk).update(state=OperationState.FAILED)

    assert _decommission(run, instance).state == OperationState.SUCCEEDED
    with pytest.raises(IllegalTransition, match="is decommissioned"):
        instance_decommission(instance=instance, confirm_name="acme")


def test_a_failed_decommission_is_retried_by_asking_again(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    faults.arm("decommission.scrub_share.before", "permanent")
    operation = _decommission(run, instance)
    assert operation.state == OperationState.FAILED
    again = _decommission(run, instance)
    assert again.pk == operation.pk and again.state == OperationState.SUCCEEDED


def test_a_failed_instance_without_resources_is_decommissioned(run):
    instance = make_instance(state=InstanceState.FAILED)
    operation = _decommission(run, instance)
    assert operation.state == OperationState.SUCCEEDED, operation.error
    assert "archive_share: the instance had no share" in operation.params["notes"]
    instance.refresh_from_db()
    assert instance.state == InstanceState.DECOMMISSIONED


def test_the_archive_and_final_backup_are_kept_for_their_retention_then_purged(run, sqlite_cell):
    instance = signup(run, sqlite_cell)
    operation = _decommission(run, instance)
    kept = list(Backup.objects.filter(operation=operation))
    paths = [crypto.local_file(backup.location) for backup in kept]
    assert len(kept) == 2 and all(path.exists() for path in paths)

    assert backups_expire(now=timezone.now() + timedelta(days=31)) == 0  # past a normal backup's retention
    assert all(path.exists() for path in paths)
    assert backups_expire(now=timezone.now() + timedelta(days=91)) == 2
    assert not any(path.exists() for path in paths)
    assert set(Backup.objects.filter(operation=operation).values_list("state", flat=True)) == {BackupState.DELETED}
