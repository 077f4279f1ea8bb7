"""Upgrade one instance to a release: back up its database, patch the image, wait for health, record the version.

On failure the instance goes back to where it was: the image it ran before is patched back, its version and
state restored, and — when the new image had already run against the database — a restore of the database to
the moment before the new image was patched in is queued (a new database, switched to in one step, the upgraded
one kept). A retry of the failed upgrade then starts over from its first step.
"""
from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from cells.choices import InstanceState, OperationKind
from cells.models import Instance, Operation
from cells.states import INSTANCE
from provisioning import drivers
from provisioning.backups import instance_restore
from provisioning.backups.selectors import point_in_time_supported
from provisioning.backups.services import backup_take
from provisioning.drivers.base import TransientDriverError
from provisioning.models import Backup, BackupKind, BackupReason, HealthStatus
from provisioning.plans.provision import release_image
from provisioning.plans.registry import MINUTES, Plan, register_plan
from provisioning.probe import instance_probe

logger = logging.getLogger(__name__)


def image_of(operation: Operation, version: str) -> str:
    return f"{operation.params['image']}:{version}"


def _instance(operation: Operation) -> Instance:
    return Instance.objects.select_related("compute_pool", "database_pool").get(pk=operation.instance_id)


def upgrade_begin(operation: Operation) -> None:
    """running or stopped → upgrading, remembering where it came from — its version, state and image (the one its
    deployment was made with, which may be another repository than the release's) — a resumed run keeps the first
    record."""
    instance = _instance(operation)
    if instance.state == InstanceState.UPGRADING:
        return
    from_image = f"{release_image(instance.server_version)}:{instance.server_version}"
    params = {**operation.params, "from_version": instance.server_version, "from_state": instance.state,
              "from_image": from_image}
    with transaction.atomic():
        INSTANCE.change(instance, InstanceState.UPGRADING)
        Operation.objects.filter(pk=operation.pk).update(params=params)
    operation.params = params


def upgrade_backup(operation: Operation) -> None:
    instance = _instance(operation)
    backup = backup_take(operation=operation, instance=instance, kind=BackupKind.DATABASE,
                         reason=BackupReason.PRE_UPGRADE)
    params = {**operation.params, "backup_id": backup.pk}
    Operation.objects.filter(pk=operation.pk).update(params=params)
    operation.params = params


def upgrade_patch_image(operation: Operation) -> None:
    """Patch the new image in, first recording the moment (a rollback restores the database to it)."""
    instance = _instance(operation)
    params = {**operation.params, "patched_at": timezone.now().isoformat()}
    Operation.objects.filter(pk=operation.pk).update(params=params)
    operation.params = params
    drivers.for_pool(instance.compute_pool).set_image(
        instance=instance, image=image_of(operation, operation.params["version"])
    )


def upgrade_wait_for_health(operation: Operation) -> None:
    """Healthy: the deployment runs the new image with its replicas ready (none wanted when stopped), and the
    instance itself answers its health check with the new version (always on a local runtime; elsewhere when
    ``HEALTH_HTTP`` is on). Asks again until ``UPGRADE_HEALTH_WAIT_SECONDS`` have passed, then raises
    ``TransientDriverError`` with what was wrong (the step runner tries again, then fails the upgrade)."""
    instance = _instance(operation)
    version = operation.params["version"]
    deadline = time.monotonic() + settings.CELLHUB["UPGRADE_HEALTH_WAIT_SECONDS"]
    while True:
        if operation.params.get("from_state") == InstanceState.STOPPED:
            status = drivers.for_pool(instance.compute_pool).status(instance=instance)
            if status.exists and status.image == image_of(operation, version):
                return
            problem = f"image {status.image or '-'} ({image_of(operation, version)} wanted)"
        else:
            probe = instance_probe(instance, version=version)
            if probe.status == HealthStatus.HEALTHY:
                return
            problem = probe.detail
        if time.monotonic() >= deadline:
            raise TransientDriverError(f"not healthy yet: {problem}")
        time.sleep(0.5)


def upgrade_record_version(operation: Operation) -> None:
    Instance.objects.filter(pk=operation.instance_id).update(server_version=operation.params["version"])


def upgrade_succeed(operation: Operation) -> None:
    instance = _instance(operation)
    back_to = operation.params.get("from_state", InstanceState.RUNNING)
    INSTANCE.change(instance, InstanceState.STOPPED if back_to == InstanceState.STOPPED else InstanceState.RUNNING)


def upgrade_fail(operation: Operation, message: str) -> str:
    """Roll back: previous image, previous version, previous state; restore the database if the new image ran; the
    steps are forgotten, so a retry starts over (its backup step finds the backup this run made)."""
    operation.refresh_from_db()
    instance = _instance(operation)
    notes = []
    from_version = operation.params.get("from_version", instance.server_version)
    from_image = operation.params.get("from_image") or image_of(operation, from_version)
    # Only a new image that ran may have changed the database; otherwise restoring would lose recent writes. Once
    # this run asked for the patch, it may have run (a step failing after its call, a call that timed out).
    patched_at = parse_datetime(operation.params.get("patched_at") or "")
    image_patched = patched_at is not None or "patch image" in operation.done_step_names
    try:
        drivers.for_pool(instance.compute_pool).set_image(instance=instance, image=from_image)
        notes.append(f"image back to {from_image}")
    except Exception as error:  # the rollback itself failed: staff must look
        notes.append(f"image rollback failed: {error.__class__.__name__}: {error}")
    Instance.objects.filter(pk=instance.pk).update(server_version=from_version)
    instance.refresh_from_db()
    if instance.state == InstanceState.UPGRADING:
        back_to = operation.params.get("from_state", InstanceState.RUNNING)
        INSTANCE.change(instance, InstanceState.STOPPED if back_to == InstanceState.STOPPED else InstanceState.RUNNING)
    params = {key: value for key, value in operation.params.items() if key != "patched_at"}
    Operation.objects.filter(pk=operation.pk).update(steps=[], params=params)
    backup = Backup.objects.filter(pk=operation.params.get("backup_id")).first()
    if image_patched and backup is not None and backup.taken_at is not None:
        point = backup.taken_at
        if patched_at is not None and point_in_time_supported(instance.database_pool):
            # Any second can be restored: the second this run patched the image in (after its backup: a retried
            # upgrade keeps its first run's backup, and what was written since must not be lost to the rollback).
            point = patched_at.replace(microsecond=0)
        try:
            restore = instance_restore(instance=instance, point_in_time=point,
                                       requested_by=operation.requested_by, follows=operation)
            notes.append(f"database restore to the pre-upgrade backup queued (operation #{restore.pk})")
        except Exception as error:
            notes.append(f"database restore not queued: {error}")
    return "rolled back: " + "; ".join(notes)


UPGRADE = Plan(
    steps=[
        ("backup", upgrade_backup),
        ("patch image", upgrade_patch_image),
        ("wait for health", upgrade_wait_for_health),
        ("record version", upgrade_record_version),
    ],
    begin=upgrade_begin,
    succeed=upgrade_succeed,
    fail=upgrade_fail,
    # It patches the image and may migrate the database; a backup (a consistent snapshot) may run meanwhile.
    excludes=frozenset({
        OperationKind.RESTORE, OperationKind.STOP, OperationKind.START, OperationKind.DECOMMISSION,
        OperationKind.PROVISION,
    }),
    time_limit=30 * MINUTES,
)
register_plan(OperationKind.UPGRADE, UPGRADE)
