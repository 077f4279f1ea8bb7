"""Production serving, through the very script the container image starts (``scripts/entrypoint web``; no container
engine needed): with DEBUG off it migrates an empty database, collects the static files and runs gunicorn, whose
pages come with their (hashed, whitenoise-served) CSS; probes answer over plain HTTP while pages go to https."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ADMIN_DSN, RUN_PREFIX

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(url, **headers):
    """(status, headers, body) without following redirects."""
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@pytest.fixture
def served(tmp_path):
    """``scripts/entrypoint web`` on a free port against a new, empty PostgreSQL database; stopped at teardown."""
    database = f"{RUN_PREFIX}_serve"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "CELLHUB_METRICS_OPEN"}},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DEBUG": "0",
        "SECRET_KEY": "a-production-secret-" + "k" * 50,
        "CELLHUB_BACKUP_KEY": "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMDAwMDA=",  # production refuses to start without
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": "postgres://{}@{}:{}/{}".format(
            os.environ.get("PGUSER", "postgres"), os.environ.get("PGHOST", "127.0.0.1"),
            os.environ.get("PGPORT", "5432"), database,
        ),
        "CELLHUB_VAR_DIR": str(tmp_path / "var"),
        "CELLHUB_CREDENTIAL_KEY": "entrypoint-test-credential-key-of-its-own",
        "STATIC_ROOT": str(tmp_path / "static"),
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "2",
        "CELLHUB_METRICS_TOKEN": "",
    }
    log = (tmp_path / "entrypoint.log").open("w")
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "entrypoint"), "web"], cwd=tmp_path, env=env, start_new_session=True,
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "entrypoint.log").read_text()
        try:
            if _get(f"{base}/healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        pytest.fail("gunicorn did not answer /healthz: " + (tmp_path / "entrypoint.log").read_text())
    yield base, tmp_path
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()


def test_the_image_entrypoint_serves_debug_off_pages_with_their_css(served):
    base, tmp_path = served
    https = {"X-Forwarded-Proto": "https"}
    assert "gunicorn" in (tmp_path / "entrypoint.log").read_text().lower()

    # Probes answer on plain HTTP (exempt from the redirect); pages are sent to https.
    assert _get(f"{base}/readyz")[0] == 200
    status, headers, _ = _get(f"{base}/login/")
    assert status == 301 and headers["Location"].startswith("https://")
    # /metrics is closed in production until a token is set (or it is explicitly opened), not redirected.
    assert _get(f"{base}/metrics")[0] == 403

    for page, stylesheet in (("/login/", "site/site"), ("/admin/login/", "admin/css/base")):
        status, _, body = _get(base + page, **https)
        assert status == 200, body[:500]
        # The manifest storage links the hashed name; whitenoise serves it as CSS.
        match = re.search(rf'href="(/static/{stylesheet}\.[0-9a-f]{{12}}\.css)"', body.decode())
        assert match, body.decode()[:2000]
        status, headers, css = _get(base + match.group(1), **https)
        assert status == 200 and headers["Content-Type"].startswith("text/css") and b"{" in css
        assert "max-age" in headers.get("Cache-Control", "")

    # The API docs' Swagger UI comes from the hub's own static files.
    status, _, body = _get(f"{base}/api/docs/", **https)
    assert status == 200 and b"/static/drf_spectacular_sidecar/swagger-ui-dist/" in body
