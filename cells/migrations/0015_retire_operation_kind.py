"""A new operation kind, ``retire``: staff retire a draining or failed pool and the hub deletes what it made for it
(provisioning/plans/retire.py). The database's list of kinds (``operation_kind_valid``) gains it."""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('cells', '0014_path_placement'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='operation',
            name='operation_kind_valid',
        ),
        migrations.AlterField(
            model_name='operation',
            name='kind',
            field=models.CharField(choices=[('provision', 'Provision'), ('top_up', 'Top up'), ('backup', 'Backup'), ('restore', 'Restore'), ('upgrade', 'Upgrade'), ('stop', 'Stop'), ('start', 'Start'), ('decommission', 'Decommission'), ('scrub', 'Scrub'), ('replace', 'Replace'), ('retire', 'Retire')], max_length=16),
        ),
        migrations.AddConstraint(
            model_name='operation',
            constraint=models.CheckConstraint(condition=models.Q(('kind__in', ['provision', 'top_up', 'backup', 'restore', 'upgrade', 'stop', 'start', 'decommission', 'scrub', 'replace', 'retire'])), name='operation_kind_valid'),
        ),
    ]
