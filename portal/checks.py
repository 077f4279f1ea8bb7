"""System checks of the hub's own settings (run by every ``manage.py`` command, ``check --deploy`` included)."""
from django.conf import settings
from django.core.checks import Error, register


@register()
def credential_key_check(app_configs=None, **kwargs) -> list[Error]:
    """Outside DEBUG, ``CELLHUB_CREDENTIAL_KEY`` must be set and differ from ``SECRET_KEY``: instance database
    passwords are derived from it, and a key shared with (or falling back to) ``SECRET_KEY`` widens what one
    leaked secret gives away."""
    if settings.DEBUG:
        return []
    key = settings.CELLHUB.get("CREDENTIAL_KEY", "")
    if not key:
        return [Error("CELLHUB_CREDENTIAL_KEY is not set.", hint="Set it to a long random value of its own.",
                      id="cellhub.E001")]
    if key == settings.SECRET_KEY:
        return [Error("CELLHUB_CREDENTIAL_KEY equals SECRET_KEY.", hint="Give it a value of its own.",
                      id="cellhub.E002")]
    return []
