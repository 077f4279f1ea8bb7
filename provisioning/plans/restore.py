"""The restore plan: a database to a point in time, or a share's files from a backup.

Steps (the operation's ``params["what"]`` says which restore; its ``Restore`` row holds the details):

1. verify — the backup is usable: not deleted, and (local drivers) its file whole and readable with the key;
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
from provisioning.models import BackupKind, BackupReason, BackupState, InstanceDatabase, Restore, RestoreState
from provisioning.plans.provision import deployment_spec
from provisioning.plans.registry import HOURS, Plan, register_plan


def _instance(operation: Operation) -> Instance:
    return Instance.objects.select_related("database_pool", "compute_pool", "share__pool").get(
        pk=operation.instance_id
    )


def _restore(operation: Operation) -> Restore:
    return Restore.objects.select_related("backup__pool").get(pk=operation.params["restore_id"])


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


def restore_verify(operation: Operation) -> None:
    backup = _restore(operation).backup
    if backup.state != BackupState.SUCCEEDED:
        raise PermanentDriverError(f"backup #{backup.pk} is {backup.state}: it cannot be restored")
    if backup.location.startswith("file://"):
        crypto.check_local_backup(backup.location, backup.checksum)


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
    drivers.for_pool(instance.database_pool).restore_database(
        instance=instance, point_in_time=restore.point_in_time, new_database=restore.new_database,
        source=restore.backup.location,
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
