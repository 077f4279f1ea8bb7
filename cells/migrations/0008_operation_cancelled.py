"""Cancelled is an operation state of its own, and the clean-up an operation still owes is on its own record.

Until now a cancel by staff was stored as ``failed`` with the error "cancelled by <who>: <reason>" (written only by
``operation_cancel``, so that prefix is unambiguous): those operations become ``cancelled``. The clean-up fields
are filled from the watchdog's side table by ``provisioning`` 0004, which then drops them there.
"""

from django.db import migrations, models


CANCEL_PREFIX = "cancelled by "


def cancels_become_cancelled(apps, schema_editor):
    Operation = apps.get_model("cells", "Operation")
    Operation.objects.filter(state="failed", error__startswith=CANCEL_PREFIX).update(state="cancelled")


def cancelled_back_to_failed(apps, schema_editor):
    Operation = apps.get_model("cells", "Operation")
    Operation.objects.filter(state="cancelled").update(state="failed")


class Migration(migrations.Migration):

    dependencies = [
        ('cells', '0007_audit_event_home'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='operation',
            name='operation_state_valid',
        ),
        migrations.AddField(
            model_name='operation',
            name='cleanup_claimed_at',
            field=models.DateTimeField(blank=True, help_text='When the owed clean-up was taken.', null=True),
        ),
        migrations.AddField(
            model_name='operation',
            name='cleanup_error',
            field=models.TextField(blank=True, help_text='Why the owed clean-up failed.'),
        ),
        migrations.AddField(
            model_name='operation',
            name='cleanup_state',
            field=models.CharField(choices=[('none', 'Nothing owed'), ('owed', 'Owed (not started)'), ('running', 'Running'), ('done', 'Done'), ('failed', 'Failed (retry the operation to run it again)')], db_index=True, default='none', help_text="The plan's release still owed after the operation was ended from outside.", max_length=8),
        ),
        migrations.AlterField(
            model_name='operation',
            name='state',
            field=models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], db_index=True, default='queued', max_length=10),
        ),
        migrations.AddConstraint(
            model_name='operation',
            constraint=models.CheckConstraint(condition=models.Q(('state__in', ['queued', 'running', 'succeeded', 'failed', 'cancelled'])), name='operation_state_valid'),
        ),
        migrations.RunPython(cancels_become_cancelled, cancelled_back_to_failed),
        migrations.AddConstraint(
            model_name='operation',
            constraint=models.CheckConstraint(condition=models.Q(('cleanup_state__in', ['none', 'owed', 'running', 'done', 'failed'])), name='operation_cleanup_state_valid'),
        ),
        migrations.AddConstraint(
            model_name='operation',
            constraint=models.CheckConstraint(condition=models.Q(('cleanup_state', 'none'), models.Q(('state__in', ['queued', 'running']), _negated=True), _connector='OR'), name='operation_cleanup_only_when_ended'),
        ),
    ]
