"""The clean-up an operation ended from outside owes moves from the watchdog's side table onto the operation.

``cleanup_pending`` with nobody on it becomes ``owed``; pending and taken becomes ``running`` (keeping when it was
taken, so the watchdog frees it if its runner died); no longer pending but taken means it ran: ``failed`` when the
note it appended to the operation's error says so, else ``done``. A watch left over from before a retry says
nothing about an operation that is active again, which keeps ``none``.
"""
from django.db import migrations

FAILED_NOTE = "clean-up failed ("
ENDED = ("failed", "cancelled")


def watch_to_operation(apps, schema_editor):
    OperationWatch = apps.get_model("provisioning", "OperationWatch")
    Operation = apps.get_model("cells", "Operation")
    watches = OperationWatch.objects.filter(operation__state__in=ENDED).exclude(
        cleanup_pending=False, cleanup_claimed_at__isnull=True
    )
    for watch in watches.select_related("operation").iterator():
        operation = watch.operation
        updates = {"cleanup_claimed_at": watch.cleanup_claimed_at}
        if watch.cleanup_pending:
            updates["cleanup_state"] = "running" if watch.cleanup_claimed_at else "owed"
        else:
            failed = next((line for line in operation.error.splitlines() if line.startswith(FAILED_NOTE)), "")
            updates.update(cleanup_state="failed" if failed else "done", cleanup_error=failed)
        Operation.objects.filter(pk=operation.pk).update(**updates)


def operation_to_watch(apps, schema_editor):
    OperationWatch = apps.get_model("provisioning", "OperationWatch")
    Operation = apps.get_model("cells", "Operation")
    for operation in Operation.objects.exclude(cleanup_state="none").iterator():
        watch, _ = OperationWatch.objects.get_or_create(operation_id=operation.pk)
        OperationWatch.objects.filter(pk=watch.pk).update(
            cleanup_pending=operation.cleanup_state in ("owed", "running"),
            cleanup_claimed_at=operation.cleanup_claimed_at,
            cleanup_reason=operation.error.splitlines()[0] if operation.error else "",
        )


class Migration(migrations.Migration):

    dependencies = [
        ('cells', '0008_operation_cancelled'),
        ('provisioning', '0003_health_watchdog_reconcile'),
    ]

    operations = [
        migrations.RunPython(watch_to_operation, operation_to_watch),
        migrations.RemoveField(
            model_name='operationwatch',
            name='cleanup_claimed_at',
        ),
        migrations.RemoveField(
            model_name='operationwatch',
            name='cleanup_pending',
        ),
        migrations.RemoveField(
            model_name='operationwatch',
            name='cleanup_reason',
        ),
    ]
