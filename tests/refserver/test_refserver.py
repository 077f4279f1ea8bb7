"""The reference server, on its own: a real HTTP server on 127.0.0.1 over a real SQLite file (and PostgreSQL), a
real share folder. No Django: it is the product the hub hosts, not part of the hub."""
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import psycopg
import pytest

from refserver.__main__ import ThreadingWSGIServer
from refserver.app import Config, Server
from refserver.store import schema_level
from tests.conftest import ADMIN_DSN, RUN_PREFIX

ROOT = Path(__file__).resolve().parents[2]


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """Start a server for a config (``serve(version=…, …)``); every one started is shut down after the test."""
    running = []

    def start(version="2026.4.1", database_url=None, share=None, fail_health=False):
        database = tmp_path / "db.sqlite3"
        if database_url is None and not database.exists():
            sqlite3.connect(database).close()
        share = share or tmp_path / "share"
        share.mkdir(exist_ok=True)
        config = Config(database_url=database_url or f"sqlite:///{database}", share_path=str(share), name="acme",
                        version=version, hostname="acme.cells.localhost", fail_health=fail_health)
        server = Server(config)
        httpd = make_server("127.0.0.1", 0, server, server_class=ThreadingWSGIServer, handler_class=_Quiet)
        server.start()
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        running.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", server

    yield start
    for httpd in running:
        httpd.shutdown()
        httpd.server_close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _post(url, data: bytes, content_type="application/x-www-form-urlencoded"):
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=5) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers


def _health(base):
    status, body = _get(f"{base}/api/health")
    return status, json.loads(body)


def _upload(base, name, content: bytes):
    boundary = "cellhub-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return _post(f"{base}/files", body, f"multipart/form-data; boundary={boundary}")


def test_health_is_ok_with_its_version_while_database_and_share_are_reachable(serve, tmp_path):
    base, _server = serve()
    assert _health(base) == (200, {"status": "ok", "version": "2026.4.1", "name": "acme", "schema": 1})

    (tmp_path / "share").rename(tmp_path / "unmounted")
    status, answer = _health(base)
    assert status == 503 and answer["status"] == "unhealthy" and "share is not mounted" in answer["reason"]

    (tmp_path / "unmounted").rename(tmp_path / "share")
    assert _health(base)[0] == 200
    (tmp_path / "db.sqlite3").unlink()
    status, answer = _health(base)
    assert status == 503 and "database file does not exist" in answer["reason"]


def test_a_release_marked_to_fail_fails_its_health_check(serve):
    base, _server = serve(fail_health=True)
    status, answer = _health(base)
    assert status == 503 and "marked to fail its health check" in answer["reason"]


def test_notes_go_to_its_database_and_files_to_its_share_and_the_page_lists_both(serve, tmp_path):
    base, _server = serve()
    assert _post(f"{base}/notes", b"body=first+note")[0] == 303
    assert _upload(base, "../report.txt", b"quarterly numbers")[0] == 303

    rows = sqlite3.connect(tmp_path / "db.sqlite3").execute("SELECT body FROM notes").fetchall()
    assert rows == [("first note",)]
    assert (tmp_path / "share" / "report.txt").read_bytes() == b"quarterly numbers"  # no way out of the share
    status, page = _get(f"{base}/")
    page = page.decode()
    assert status == 200 and "acme" in page and "2026.4.1" in page
    assert "first note" in page and "report.txt" in page
    assert _get(f"{base}/files/report.txt") == (200, b"quarterly numbers")
    assert json.loads(_get(f"{base}/api/files")[1]) == {"files": [{"name": "report.txt", "size": 17}]}
    assert _post(f"{base}/notes", b"body=")[0] == 400


def test_each_version_applies_its_schema_and_an_older_one_refuses_a_newer_database(serve, tmp_path):
    assert schema_level("2026.4.1") == 1 and schema_level("2026.5.0") == 2
    base, old = serve(version="2026.4.1")
    _post(f"{base}/notes", b"body=before+the+upgrade")
    database = tmp_path / "db.sqlite3"
    columns = [row[1] for row in sqlite3.connect(database).execute("PRAGMA table_info(notes)")]
    assert "author" not in columns

    base, new = serve(version="2026.5.0")  # the upgrade: the new version changes the database as it starts
    columns = [row[1] for row in sqlite3.connect(database).execute("PRAGMA table_info(notes)")]
    assert "author" in columns
    assert _post(f"{base}/notes", b"body=after&author=Ada")[0] == 303
    notes = json.loads(_get(f"{base}/api/notes")[1])["notes"]
    assert [(n["body"], n["author"]) for n in notes] == [("before the upgrade", ""), ("after", "Ada")]

    base, rolled_back = serve(version="2026.4.1")  # the old version on the upgraded database: not healthy
    status, answer = _health(base)
    assert status == 503 and "newer than version 2026.4.1 knows" in answer["reason"]


def test_it_runs_on_postgresql_with_its_own_login(serve):
    name = f"{RUN_PREFIX}_refserver"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = "postgresql://{user}@{host}:{port}/{name}".format(
        user=os.environ.get("PGUSER", "postgres"), host=os.environ.get("PGHOST", "127.0.0.1"),
        port=os.environ.get("PGPORT", "5432"), name=name,
    )
    base, _server = serve(version="2026.5.0", database_url=url)
    assert _health(base)[0] == 200
    _post(f"{base}/notes", b"body=in+postgres&author=Ada")
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT body, author FROM notes").fetchall() == [("in postgres", "Ada")]


def test_it_imports_nothing_of_the_hub():
    code = ("import sys, refserver.app, refserver.store, refserver.__main__\n"
            "hub = {'django', 'cells', 'provisioning', 'portal'}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in hub))")
    result = subprocess.run([sys.executable, "-P", "-c", code], cwd="/", env={"PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
