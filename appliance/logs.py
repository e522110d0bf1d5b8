"""Structured logs: one JSON object per line on stderr, with the request id on each.

``configure`` is called by ``appliance serve``. Every line has ``ts`` (UTC), ``level``,
``logger`` and ``msg``; a line written while a request is being handled also has its
``request_id`` (the device's ``X-Request-Id`` when it sent a sane one, else a fresh one; the
response carries it back, and the audit row has the same id). Fields passed with
``extra={...}`` are added as they are.

What is never logged: prompts, answers, placeholder maps, tokens, keys. Log sites pass
ids, counts, types and reasons; the test suite scans every log line of a full run for the
PII corpus's values (``tests/conftest.py``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

LEVEL_ENV = "APPLIANCE_LOG_LEVEL"
_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "appliance_request_id", default=None
)
_SANE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# LogRecord's own attributes: everything else on a record came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "request_id",
}


def request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return _REQUEST_ID.get()


def new_request_id(offered: str | None = None) -> str:
    """`offered` when it is a sane id (a device's X-Request-Id), else a fresh one."""
    if offered and _SANE_ID.match(offered):
        return offered
    return uuid.uuid4().hex


def bind_request_id(value: str) -> contextvars.Token[str | None]:
    return _REQUEST_ID.set(value)


def unbind_request_id(token: contextvars.Token[str | None]) -> None:
    _REQUEST_ID.reset(token)


def _install_record_factory() -> None:
    """Stamp each record with the request id when it is *made*, not when it is formatted
    (a handler may format later, on another thread, outside the request's context)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_appliance", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        current = _REQUEST_ID.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id = current
        return record

    # a mark on the function object, so a second install() sees its own factory in place
    factory._appliance = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_install_record_factory()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        current = getattr(record, "request_id", None) or _REQUEST_ID.get()
        if current is not None:
            document["request_id"] = current
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in document:
                document[key] = value
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, ensure_ascii=False)


def configure(level: str | None = None) -> None:
    """JSON lines on stderr for the whole process (the daemon's own and uvicorn's)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((level or os.environ.get(LEVEL_ENV) or "INFO").upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # httpx logs every request line at INFO (with URLs); the sync engine says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
