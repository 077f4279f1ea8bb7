"""The reference server's WSGI application: a page, a health answer, notes and files."""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qs, quote, unquote, urlparse

from refserver.store import Database, Share, StoreError, schema_level

MAX_UPLOAD_BYTES = 20 * 1024 * 1024


@dataclass
class Config:
    """What the deployment gives the server, read from the environment."""

    database_url: str
    share_path: str
    name: str = "instance"
    version: str = "0"
    hostname: str = ""
    fail_health: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_environment(cls, environ=os.environ) -> Config:
        share_path = environ.get("SHARE_PATH", "")
        if not share_path and environ.get("SHARE_ENDPOINT", "").startswith("file://"):
            share_path = unquote(urlparse(environ["SHARE_ENDPOINT"]).path)
        return cls(
            database_url=environ.get("DATABASE_URL", ""),
            share_path=share_path or "/data",
            name=environ.get("INSTANCE_NAME", "instance"),
            version=environ.get("SERVER_VERSION", "0"),
            hostname=environ.get("PUBLIC_HOSTNAME", ""),
            fail_health=environ.get("REFSERVER_FAIL_HEALTH", "") in {"1", "true", "yes"},
        )


class Server:
    """One instance's server. ``start`` applies this version's schema; a database that is not reachable yet is
    migrated on the next health check instead, so the server comes up with the database."""

    def __init__(self, config: Config):
        self.config = config
        self.database = Database(config.database_url)
        self.share = Share(config.share_path)
        self.level = schema_level(config.version)
        self.migrated = False
        self.startup_problem = ""

    def start(self) -> None:
        try:
            self.database.migrate(self.config.version)
            self.migrated = True
            self.startup_problem = ""
        except StoreError as error:
            self.startup_problem = str(error)

    def problems(self) -> list[str]:
        """Why the server is not healthy right now (empty: healthy)."""
        problems = []
        if self.config.fail_health:
            problems.append("this release is marked to fail its health check (a canary-halt rehearsal)")
        if not self.migrated:
            self.start()
        try:
            if self.migrated:
                self.database.check(self.config.version)
            else:
                problems.append(self.startup_problem)
        except StoreError as error:
            problems.append(str(error))
        try:
            self.share.check()
        except StoreError as error:
            problems.append(str(error))
        return problems

    # ---- WSGI ---------------------------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        try:
            if path == "/api/health" and method == "GET":
                return self.health(start_response)
            if path == "/" and method == "GET":
                return self.page(environ, start_response)
            if path == "/api/notes" and method == "GET":
                return self._json(start_response, "200 OK", {"notes": [n.__dict__ for n in self._notes()]})
            if path == "/api/files" and method == "GET":
                files = [{"name": name, "size": size} for name, size in self.share.files()]
                return self._json(start_response, "200 OK", {"files": files})
            if path == "/notes" and method == "POST":
                return self.add_note(environ, start_response)
            if path == "/files" and method == "POST":
                return self.upload(environ, start_response)
            if path.startswith("/files/") and method == "GET":
                return self.download(path.removeprefix("/files/"), start_response)
        except StoreError as error:
            return self._text(start_response, "503 Service Unavailable", f"Unavailable: {error}\n")
        except ValueError as error:
            return self._text(start_response, "400 Bad Request", f"{error}\n")
        return self._text(start_response, "404 Not Found", "Not found\n")

    def health(self, start_response):
        problems = self.problems()
        if problems:
            body = {"status": "unhealthy", "version": self.config.version, "reason": "; ".join(problems)}
            return self._json(start_response, "503 Service Unavailable", body)
        return self._json(start_response, "200 OK", {"status": "ok", "version": self.config.version,
                                                    "name": self.config.name, "schema": self.level})

    def _notes(self):
        if not self.migrated:
            self.start()
        if not self.migrated:
            raise StoreError(self.startup_problem)
        return self.database.notes(self.level)

    def add_note(self, environ, start_response):
        form = parse_qs(self._body(environ).decode("utf-8", "replace"))
        body = (form.get("body") or [""])[0].strip()
        if not body:
            raise ValueError("a note needs some text")
        self._notes()  # migrated, reachable
        self.database.add_note(body[:2000], author=(form.get("author") or [""])[0].strip()[:100], level=self.level)
        return self._redirect(start_response, "/")

    def upload(self, environ, start_response):
        content_type = environ.get("CONTENT_TYPE", "")
        if not content_type.startswith("multipart/form-data"):
            raise ValueError("upload a file as multipart/form-data")
        raw = self._body(environ)
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "file" and part.get_filename():
                self.share.save(part.get_filename(), part.get_payload(decode=True) or b"")
                return self._redirect(start_response, "/")
        raise ValueError("choose a file to upload")

    def download(self, name, start_response):
        try:
            content = self.share.read(name)
        except FileNotFoundError:
            return self._text(start_response, "404 Not Found", "No such file\n")
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(content)))])
        return [content]

    def page(self, environ, start_response):
        config, escape = self.config, html.escape
        try:
            notes, note_error = self._notes(), ""
        except StoreError as error:
            notes, note_error = [], str(error)
        try:
            files, file_error = self.share.files(), ""
        except StoreError as error:
            files, file_error = [], str(error)
        show_author = self.level >= 2
        note_rows = "".join(
            f"<li data-role='note'>{escape(note.body)} <small>{escape(note.created_at)} UTC"
            + (f" · {escape(note.author)}" if show_author and note.author else "") + "</small></li>"
            for note in notes
        ) or "<li class='none'>No notes yet.</li>"
        file_rows = "".join(
            f"<li data-role='file'><a href='/files/{quote(name)}'>{escape(name)}</a> <small>{size} bytes</small></li>"
            for name, size in files
        ) or "<li class='none'>No files yet.</li>"
        author_field = "<input name='author' placeholder='Your name'>" if show_author else ""
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(config.name)} · reference server</title>
<style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}}
.err{{color:#b00}} small{{color:#666}} form{{margin:.5rem 0 1.5rem}}</style></head>
<body>
<h1 data-role="name">{escape(config.name)}</h1>
<p>Version <strong data-role="version">{escape(config.version)}</strong> · schema level {self.level}
{f"· {escape(config.hostname)}" if config.hostname else ""}</p>
<h2>Notes</h2>{f"<p class='err'>{escape(note_error)}</p>" if note_error else ""}
<ul data-role="notes">{note_rows}</ul>
<form method="post" action="/notes"><input name="body" placeholder="A note" required> {author_field}
<button type="submit">Add note</button></form>
<h2>Files</h2>{f"<p class='err'>{escape(file_error)}</p>" if file_error else ""}
<ul data-role="files">{file_rows}</ul>
<form method="post" action="/files" enctype="multipart/form-data"><input type="file" name="file" required>
<button type="submit">Upload</button></form>
</body></html>"""
        data = page.encode()
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data)))])
        return [data]

    # ---- helpers ------------------------------------------------------------------------------------------------

    @staticmethod
    def _body(environ) -> bytes:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_UPLOAD_BYTES:
            raise ValueError(f"at most {MAX_UPLOAD_BYTES} bytes at once")
        return environ["wsgi.input"].read(length) if length else b""

    @staticmethod
    def _json(start_response, status, body):
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store")])
        return [data]

    @staticmethod
    def _text(start_response, status, text):
        data = text.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
        return [data]

    @staticmethod
    def _redirect(start_response, location):
        start_response("303 See Other", [("Location", location), ("Content-Length", "0")])
        return [b""]
