from django.apps import AppConfig
from django.core.checks import register as register_check
from django.db.models.signals import post_migrate

from provisioning import checks  # noqa: F401  (registers the system checks)
from provisioning.plans import registry


def _sync_schedules(sender, **kwargs):
    from provisioning.schedules import schedules_sync

    schedules_sync()


class ProvisioningConfig(AppConfig):
    """Background work (django-q2 tasks, the operation step runner) and the cloud drivers."""

    name = "provisioning"
    verbose_name = "Provisioning"

    def ready(self):
        registry.discover()
        # After migrate the schedule table exists: register the recurring work (idempotent, by name).
        post_migrate.connect(_sync_schedules, sender=self, dispatch_uid="cellhub-sync-schedules")
        from provisioning.dns_policy import check_one_dns_provider  # reads the models: only once they are loaded

        register_check(check_one_dns_provider)
