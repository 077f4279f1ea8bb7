from django.apps import AppConfig
from django.db.models.signals import post_migrate

from portal import checks  # noqa: F401 — registers the hub's system checks
from portal.roles import READ_ONLY_STAFF_GROUP


def _grant_read_only_staff_view_permissions(sender, **kwargs):
    """Keep the read-only staff group able to view every model (permissions appear after migrate)."""
    from django.contrib.auth.models import Group, Permission

    group, _ = Group.objects.get_or_create(name=READ_ONLY_STAFF_GROUP)
    group.permissions.add(*Permission.objects.filter(codename__startswith="view_"))


class PortalConfig(AppConfig):
    """The customer site, API accounts (tokens, idempotency) and the hub's process endpoints."""

    name = "portal"
    verbose_name = "Portal"

    def ready(self):
        post_migrate.connect(_grant_read_only_staff_view_permissions, dispatch_uid="cellhub-read-only-staff")
