"""The audit log's model moves into the domain kernel (``cells``): the table, its rows, indexes, constraints and
the append-only trigger stay exactly where they are (``portal_auditevent``); only Django's idea of which app owns
the model changes (portal migration 0005 forgets it there)."""
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("cells", "0006_rollouts_and_windows"),
        ("portal", "0004_audit_append_only"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("at", models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                        ("actor_label", models.CharField(blank=True, max_length=255)),
                        ("actor_kind", models.CharField(choices=[("staff", "Staff (admin)"), ("customer", "Customer (site)"), ("api_token", "API"), ("scheduler", "Scheduler and workers")], max_length=10)),
                        ("action", models.CharField(db_index=True, help_text="What was done, e.g. instance.stop.", max_length=64)),
                        ("target_type", models.CharField(blank=True, max_length=32)),
                        ("target_id", models.CharField(blank=True, max_length=64)),
                        ("target_label", models.CharField(blank=True, max_length=255)),
                        ("outcome", models.CharField(choices=[("succeeded", "Succeeded"), ("refused", "Refused"), ("failed", "Failed")], max_length=10)),
                        ("reason", models.TextField(blank=True, help_text="Why: the reason given, or the refusal or error.")),
                        ("details", models.JSONField(blank=True, default=dict)),
                        ("address", models.GenericIPAddressField(blank=True, help_text="The request's client address.", null=True)),
                        ("actor", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        "db_table": "portal_auditevent",
                        "ordering": ["-at", "-id"],
                        "indexes": [models.Index(fields=["target_type", "target_id", "at"], name="audit_target"), models.Index(fields=["actor", "at"], name="audit_actor")],
                        "constraints": [models.CheckConstraint(condition=models.Q(("actor_kind__in", ["staff", "customer", "api_token", "scheduler"])), name="audit_actor_kind_valid"), models.CheckConstraint(condition=models.Q(("outcome__in", ["succeeded", "refused", "failed"])), name="audit_outcome_valid")],
                    },
                ),
            ],
        ),
    ]
