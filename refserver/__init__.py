"""The reference server: a small stand-in for the product the hub hosts (Octopus Server in the articles).

It knows nothing of the hub (it imports only the standard library, and psycopg for a PostgreSQL database):
it reads what its deployment gives it from the environment, the same values a Kubernetes Secret and volume
carry, and serves one instance's data.

Environment:

- ``DATABASE_URL`` — its own database: ``sqlite:////abs/path.sqlite3`` or ``postgres://login:password@host/db``;
- ``SHARE_PATH`` — the folder its share is mounted at (``/data`` in a pod); ``SHARE_ENDPOINT`` (a ``file://``
  URI) is read when ``SHARE_PATH`` is not set;
- ``INSTANCE_NAME``, ``SERVER_VERSION``, ``PUBLIC_HOSTNAME`` — shown on its page and in its health answer;
- ``PORT`` (default 8080) and ``LISTEN_ADDRESS`` (default 127.0.0.1) — where it listens;
- ``REFSERVER_FAIL_HEALTH=1`` — the release is marked to fail its health check (a canary-halt rehearsal).

It serves:

- ``GET /api/health`` — 200 ``{"status": "ok", "version": …}`` only while its database answers (with a schema
  this version can use) and its share is a writable folder; otherwise 503 with ``{"status": "unhealthy",
  "reason": …}``;
- ``GET /`` — a page with its name, version and data: notes (kept in its database) and files (kept in its share),
  each listed, with a form to add a note and one to upload a file;
- ``POST /notes`` (``body``, and from schema level 2 ``author``), ``POST /files`` (multipart ``file``),
  ``GET /files/<name>``; ``GET /api/notes`` and ``GET /api/files`` list them as JSON.

Each version applies its own schema change when it starts (``schema.MIGRATIONS``): a server from version 2026.5
on adds the column ``notes.author``. An older server refuses a database whose schema is newer than it knows
(its health says so), so a rollback needs the backup taken before the upgrade.
"""
