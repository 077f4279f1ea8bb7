from django.apps import AppConfig


class PortalConfig(AppConfig):
    """The customer site and the hub's process endpoints."""

    name = "portal"
    verbose_name = "Portal"
