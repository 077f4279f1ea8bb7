from django.db import migrations, models
import django.db.models.deletion


class Migration(migrations.Migration):
    """A reef may be dedicated to one instance (the isolation spectrum's far end): it then takes no other."""

    dependencies = [("cells", "0011_release_fails_health_local_processes")]

    operations = [
        migrations.AddField(
            model_name="reef",
            name="dedicated_to",
            field=models.OneToOneField(
                blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="dedicated_reef",
                to="cells.instance",
                help_text="The one instance this reef holds (a dedicated reef): it takes no other instance and no "
                "top-up.",
            ),
        ),
    ]
