"""The audit log's model now belongs to ``cells`` (cells migration 0007); the table stays, only the state moves."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("portal", "0004_audit_append_only"), ("cells", "0007_audit_event_home")]

    operations = [
        migrations.SeparateDatabaseAndState(database_operations=[], state_operations=[migrations.DeleteModel("AuditEvent")]),
    ]
