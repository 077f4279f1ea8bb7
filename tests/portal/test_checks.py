"""The hub refuses to run in production without a credential key of its own."""
from portal.checks import credential_key_check


def _ids(settings, debug, key):
    settings.DEBUG = debug
    settings.CELLHUB = {**settings.CELLHUB, "CREDENTIAL_KEY": key}
    return [error.id for error in credential_key_check()]


def test_production_needs_a_credential_key_apart_from_the_secret_key(settings):
    assert _ids(settings, False, "") == ["cellhub.E001"]
    assert _ids(settings, False, settings.SECRET_KEY) == ["cellhub.E002"]
    assert _ids(settings, False, "a key of its own, long and random") == []
    assert _ids(settings, True, "") == []  # DEBUG falls back to SECRET_KEY


def test_the_settings_give_production_no_fallback(monkeypatch):
    """Outside DEBUG the settings leave the key empty when CELLHUB_CREDENTIAL_KEY is unset (no SECRET_KEY)."""
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "DEBUG": "0", "SECRET_KEY": "x" * 50, "DJANGO_SETTINGS_MODULE": "portal.settings",
           "DATABASE_URL": "sqlite:////tmp/unused.sqlite3"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
         "print(repr(settings.CELLHUB['CREDENTIAL_KEY']))"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.stdout.strip() == "''", result.stderr[-2000:]
    checked = subprocess.run([sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode != 0 and "cellhub.E001" in checked.stderr
