"""Structured logs: the operation a line belongs to, stamped on every line, and a one-object-per-line JSON format.

``log_context(operation_id=…, operation_kind=…, instance=…)`` binds fields for the code running inside it (the
step runner binds them for the whole of an operation's run); ``ContextFilter`` copies them onto every record
that passes the handler, so a line from a driver, django-q2 or Django itself carries them too. Bound fields are
a ``ContextVar``: threads started with ``contextvars.copy_context().run`` (the step runner's) inherit them.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

CONTEXT_FIELDS = ("operation_id", "operation_kind", "instance")
_context: ContextVar[dict | None] = ContextVar("cellhub_log_context", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "context"}


@contextmanager
def log_context(**fields):
    """Bind ``fields`` to every log line written inside the block (nested blocks add to the outer ones)."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Stamps the bound fields on each record (None when unbound) and a short ``context`` text for plain formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get() or {}
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, bound.get(name))
        operation = getattr(record, "operation_id", None)
        record.context = f" [operation {operation}]" if operation is not None else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the bound fields, ``extra=`` fields,
    and the formatted exception when there is one. Values JSON cannot hold are written as their ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            entry[name] = getattr(record, name, None)
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
