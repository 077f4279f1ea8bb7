"""System checks of the provisioning app: run by every management command (``migrate``, ``runserver``,
``qcluster``, ``check --deploy``), so a misconfigured production hub refuses to start instead of failing later."""
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.checks import Error, Tags, register

from provisioning.crypto import KEY_VARIABLE


@register(Tags.security)
def backup_key_check(app_configs, **kwargs):
    """Production (DEBUG off) needs ``CELLHUB_BACKUP_KEY``, a Fernet key: without it no local backup can be taken,
    and a backup made with a lost key can never be read. Development gets one from ``scripts/dev``."""
    key = (settings.CELLHUB.get("BACKUP_KEY") or "").strip()
    if not key:
        if settings.DEBUG:
            return []
        return [Error(
            f"{KEY_VARIABLE} is not set: backups cannot be encrypted.",
            hint=f"Set {KEY_VARIABLE} to a Fernet key (python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())') and keep a copy off this machine.",
            id="cellhub.E010",
        )]
    try:
        Fernet(key)
    except (ValueError, TypeError):
        return [Error(f"{KEY_VARIABLE} is not a Fernet key (32 bytes, url-safe base64).", id="cellhub.E011")]
    return []
