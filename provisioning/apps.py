from django.apps import AppConfig


class ProvisioningConfig(AppConfig):
    """Background work (django-q2 tasks, the operation step runner) and the cloud drivers."""

    name = "provisioning"
    verbose_name = "Provisioning"
