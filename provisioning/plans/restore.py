"""The restore plan: a database to a point in time, or a share's files from a backup.

Steps (the operation's ``params["what"]`` says which restore; its ``Restore`` row holds the details):

1. verify — the backup is usable: not deleted, and its checksum as stored now (``backup_checksum`` of its driver)
   is the one recorded when it was made — the one check every restore passes, before anything is written;
   a point-in-time restore on a managed PostgreSQL pool checks its base backup the same way; a provider that
   restores from its own replica (Litestream, the clouds' PITR) checks the replica's own checksums itself;
2. safeguard — files: back the share's current content up first; database: nothing (the old database is kept);
3. restore — database: into the NEW database ``Restore.new_database``, never over the live one;
   files: the share's content replaced by the backup's (unpacked aside first, then moved in);
4. activate — database: the switch, in one step: the instance's current database becomes the new one and its
   deployment is re-deployed with the new connection string; files: the restored content is counted.

On failure the live database stays the one in use: an unfinished new database is dropped, the deployment is
re-deployed with the current one, and the steps start over on a retry.
"""
from __future__ import annotations

import dataclasses
from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cells.choices import InstanceState, OperationKind
from cells.errors import Refused
from cells.models import Instance, Operation
from provisioning import crypto, drivers
from provisioning.backups.selectors import RESTORE_STATES, current_database
from provisioning.backups.services import backup_take
from provisioning.drivers.base import PermanentDriverError
from provisioning.models import Backup, BackupKind, BackupReason, BackupState, InstanceDatabase, Restore, RestoreState
from provisioning.plans.provision import deployment_spec
from provisioning.plans.registry import HOURS, Plan, register_plan


def _instance(operation: Operation) -> Instance:
    return Instance.objects.select_related("database_pool", "compute_pool", "share__pool").get(
        pk=operation.instance_id
    )


def _restore(operation: Operation) -> Restore:
    return Restore.objects.select_related("backup__pool", "base_backup__pool").get(pk=operation.params["restore_id"])


def _in_use(instance: Instance) -> str:
    return current_database(instance) or drivers.for_pool(instance.database_pool).database_name(instance)


def instance_redeploy(instance: Instance, *, database: str) -> None:
    """Deploy the instance again pointing at ``database``, keeping its replica count (a stopped one stays at 0)."""
    compute = drivers.for_pool(instance.compute_pool)
    credentials = drivers.for_pool(instance.database_pool).credentials(instance, database=database)
    status = compute.status(instance=instance)
    replicas = status.replicas if status.exists else (0 if instance.state == InstanceState.STOPPED else 1)
    spec = deployment_spec(instance, database_url=credentials.url, share=instance.share)
    compute.deploy(spec=dataclasses.replace(spec, replicas=replicas))


def restore_begin(operation: Operation) -> None:
    """Refuse (naming the state) unless the instance is running or stopped; a retried restore is pending again."""
    instance = _instance(operation)
    if instance.state not in RESTORE_STATES:
        raise Refused(f"instance {instance.name} is {instance.state}; the restore does not run")
    Restore.objects.filter(pk=operation.params["restore_id"]).update(state=RestoreState.PENDING, finished_at=None)


def restore_source(restore: Restore):
    """What the restore reads: the hub's backup, the pool's base backup (managed PostgreSQL), or None (the provider
    restores from its own replica)."""
    return restore.base_backup or restore.backup


def restore_verify(operation: Operation) -> None:
    """Refuse (``BackupCorrupt``, permanent) a source that is not succeeded or whose checksum as stored now differs
    from the one recorded when it was made; nothing has been written yet."""
    restore = _restore(operation)
    source = restore_source(restore)
    if source is None:
        return
    if source.state != BackupState.SUCCEEDED:
        raise PermanentDriverError(f"{source} is {source.state}: it cannot be restored")
    if not source.checksum:
        raise crypto.BackupCorrupt(f"{source} has no recorded checksum: it cannot be verified, so it is not used")
    found = drivers.for_pool(source.pool).backup_checksum(location=source.location)
    if found != source.checksum:
        raise crypto.BackupCorrupt(
            f"{source} does not match its recorded checksum (recorded {source.checksum[:12]}…, found "
            f"{found[:12]}…): it was changed or damaged after it was made; nothing was restored"
        )
    if source.location.startswith("file://") and isinstance(source, Backup):
        crypto.check_local_backup(source.location, source.checksum)  # and readable with the current key


def database_at(instance: Instance, moment) -> str:
    """The database the instance used at ``moment``: the one the last restore finished by then switched to, else
    its derived one."""
    switched = Restore.objects.filter(
        instance=instance, kind=BackupKind.DATABASE, state=RestoreState.SUCCEEDED, finished_at__lte=moment
    ).order_by("-finished_at", "-id").values_list("new_database", flat=True).first()
    return switched or drivers.for_pool(instance.database_pool).database_name(instance)


def restore_safeguard(operation: Operation) -> None:
    restore = _restore(operation)
    if restore.kind != BackupKind.FILES:
        return
    instance = _instance(operation)
    safeguard = backup_take(
        operation=operation, instance=instance, kind=BackupKind.FILES, reason=BackupReason.PRE_RESTORE
    )
    Restore.objects.filter(pk=restore.pk).update(safeguard=safeguard)


def restore_restore(operation: Operation) -> None:
    restore, instance = _restore(operation), _instance(operation)
    if restore.kind == BackupKind.FILES:
        drivers.for_pool(instance.share.pool).restore_share(share=instance.share, location=restore.backup.location)
        return
    if restore.new_database == _in_use(instance):
        return  # switched already (a re-run after the switch)
    if restore.base_backup is not None:
        database = database_at(instance, restore.point_in_time)
        source = f"{restore.base_backup.location}?{urlencode({'database': database})}"
    elif restore.backup is not None:
        source = restore.backup.location
    else:  # the provider's own replica: of the database the instance used at that time
        source = "?" + urlencode({"database": database_at(instance, restore.point_in_time)})
    drivers.for_pool(instance.database_pool).restore_database(
        instance=instance, point_in_time=restore.point_in_time, new_database=restore.new_database, source=source,
    )


def restore_activate(operation: Operation) -> None:
    restore, instance = _restore(operation), _instance(operation)
    if restore.kind == BackupKind.FILES:
        storage = drivers.for_pool(instance.share.pool)
        expected = restore.backup.details.get("files")
        if hasattr(storage, "share_listing") and expected is not None:
            found = sum(1 for value in storage.share_listing(share=instance.share).values() if value != "dir")
            if found != expected:
                raise PermanentDriverError(
                    f"the share holds {found} files after the restore; the backup has {expected}"
                )
        return
    previous = _in_use(instance)
    with transaction.atomic():
        InstanceDatabase.objects.update_or_create(
            instance=instance, defaults={"name": restore.new_database, "restore": restore}
        )
        if previous != restore.new_database:
            keep = timedelta(days=settings.CELLHUB["RESTORE_KEEP_OLD_DAYS"])
            Restore.objects.filter(pk=restore.pk).update(old_database=previous, keep_old_until=timezone.now() + keep)
        # Inside the transaction: a deployment that cannot be updated leaves the instance on its old database.
        instance_redeploy(instance, database=restore.new_database)


def restore_succeed(operation: Operation) -> None:
    Restore.objects.filter(pk=operation.params["restore_id"]).update(
        state=RestoreState.SUCCEEDED, finished_at=timezone.now()
    )


def restore_fail(operation: Operation, message: str) -> str:
    """Leave the instance on the database it uses; drop an unused new one; the retry starts from the first step."""
    restore = _restore(operation)
    Restore.objects.filter(pk=restore.pk).update(state=RestoreState.FAILED, finished_at=timezone.now())
    Operation.objects.filter(pk=operation.pk).update(steps=[])
    instance = _instance(operation)
    if restore.kind == BackupKind.FILES:
        if restore.safeguard_id:
            return (f"the share may be partly restored; files backup #{restore.safeguard_id} holds what it had "
                    "before, and a retry restores again")
        return "the share was not changed"
    problems = []
    in_use = _in_use(instance)
    if restore.new_database != in_use:
        database = drivers.for_pool(instance.database_pool)
        try:
            database.drop_database(instance=instance, database=restore.new_database, drop_login=False)
        except Exception as error:
            problems.append(f"unfinished database {restore.new_database} not dropped: {error}")
        try:
            instance_redeploy(instance, database=in_use)
        except Exception as error:
            problems.append(f"deployment not re-pointed at {in_use}: {error}")
    if problems:
        return "the instance keeps its database, but: " + "; ".join(problems)
    return f"the instance still uses database {in_use}; a retry starts the restore over"


RESTORE = Plan(
    steps=[
        ("verify", restore_verify),
        ("safeguard", restore_safeguard),
        ("restore", restore_restore),
        ("activate", restore_activate),
    ],
    begin=restore_begin,
    succeed=restore_succeed,
    fail=restore_fail,
    # It switches the database and redeploys compute: a backup could copy what is being replaced, and an upgrade,
    # a stop or a start would race its redeploy.
    excludes=frozenset({
        OperationKind.BACKUP, OperationKind.UPGRADE, OperationKind.STOP, OperationKind.START,
        OperationKind.DECOMMISSION, OperationKind.PROVISION,
    }),
    time_limit=6 * HOURS, step_timeout=540.0,
)
register_plan(OperationKind.RESTORE, RESTORE)
