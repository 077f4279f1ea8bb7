"""The read-only staff group exists from the start (its members read everything and change nothing)."""
from django.db import migrations

GROUP = "read-only staff"


def create_group(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    # View permissions let them browse the admin; they get no add/change/delete permission.
    group.permissions.add(*Permission.objects.filter(codename__startswith="view_"))


def drop_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [("portal", "0001_api_tokens_idempotency"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(create_group, drop_group)]
