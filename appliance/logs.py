"""Structured logs: one JSON object per line on stderr, with the request id on each.

``configure`` is called by ``appliance serve``. Every line has ``ts`` (UTC), ``level``,
``logger`` and ``msg``; a line written while a request is being handled also has its
``request_id`` (the device's ``X-Request-Id`` when it sent a sane one, else a fresh one; the
response carries it back, and the audit row has the same id). Fields passed with
``extra={...}`` are added as they are.

What is never logged: prompts, answers, placeholder maps, tokens, keys. Log sites pass
ids, counts, types and reasons; the test suite scans every log line of a full run for the
PII corpus's values (``tests/conftest.py``).

One format for every line: llama.cpp's and ggml's own messages (``llama_kv_cache_iswa: …``),
which they would print to stderr as bare text, come through ``route_llama_logs`` as records
of the logger ``llama.cpp``; a structured value goes in ``extra=``, never into ``msg``. The
handler writes to its own copy of the stderr descriptor, because llama-cpp-python points
descriptor 2 at /dev/null while it loads a model, which would swallow every other thread's
lines for those seconds.
"""

from __future__ import annotations

import contextvars
import ctypes
import json
import logging
import os
import re
import sys
import threading
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


def _own_stderr() -> Any:
    """A stream on a duplicate of stderr's descriptor (see the module docstring), else
    sys.stderr itself (one with no descriptor, as under a test runner's capture)."""
    try:
        fd = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return sys.stderr
    return open(fd, "w", encoding="utf-8", errors="replace", buffering=1, closefd=True)


class _JsonLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs; closing it closes its own stream (not sys.stderr)."""

    def close(self) -> None:
        try:
            if self.stream is not sys.stderr:
                self.stream.close()
        finally:
            super().close()


def configure(level: str | None = None) -> None:
    """JSON lines on stderr for the whole process (the daemon's own, uvicorn's, llama.cpp's)."""
    handler = _JsonLines(_own_stderr())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, _JsonLines):  # configured again: its descriptor goes too
            old.close()
    root.addHandler(handler)
    root.setLevel((level or os.environ.get(LEVEL_ENV) or "INFO").upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # httpx logs every request line at INFO (with URLs); the sync engine says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # What Python itself would print bare: warnings, and a thread's uncaught exception.
    logging.captureWarnings(True)
    threading.excepthook = _thread_died


def _thread_died(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    error = args.exc_value if args.exc_value is not None else args.exc_type()
    logging.getLogger("appliance").error("thread %s died", name, exc_info=error)


# -- llama.cpp's own messages ---------------------------------------------------------------

LLAMA_LOGGER = "llama.cpp"
# ggml.h's enum ggml_log_level (NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5).
# llama-cpp-python 0.3's table predates the renumbering, so it prints warnings as bare
# text. llama.cpp's INFO is the load's chatter (tensor and buffer sizes): debug here.
_GGML_LEVELS = {
    0: logging.INFO,
    1: logging.DEBUG,
    2: logging.DEBUG,
    3: logging.WARNING,
    4: logging.ERROR,
}
_GGML_CONT = 5  # continues the thread's previous message at its level
_MAX_PENDING_CHARS = 4096  # a message with no end of line yet is logged as it is past this
_native_log = logging.getLogger(LLAMA_LOGGER)
_native_lock = threading.Lock()
_native_callback: Any = None  # held here: llama.cpp calls it for the life of the process


class _Pending(threading.local):
    """A message llama.cpp has not finished yet (it sends lines in pieces), per thread."""

    text = ""
    level = logging.DEBUG


_pending = _Pending()


def llama_message(level: int, text: bytes | None) -> None:
    """Take one piece of a llama.cpp/ggml message; log each line once it is complete."""
    try:
        if level != _GGML_CONT:
            _pending.level = _GGML_LEVELS.get(level, logging.INFO)
        _pending.text += (text or b"").decode("utf-8", errors="replace")
        *lines, _pending.text = _pending.text.split("\n")
        if len(_pending.text) > _MAX_PENDING_CHARS:
            lines.append(_pending.text)
            _pending.text = ""
        for line in lines:
            if line.strip() and _native_log.isEnabledFor(_pending.level):
                _native_log.log(_pending.level, line.rstrip())
    except Exception:  # nothing may raise into C; a lost line beats a crashed daemon
        _pending.text = ""


def route_llama_logs() -> None:
    """Send llama.cpp's and ggml's messages through ``logging`` from now on (idempotent).

    Called before a model is loaded (``runtime.llama_backend.open_llama``).
    """
    global _native_callback
    with _native_lock:
        if _native_callback is not None:
            return
        import llama_cpp

        def callback(level: int, text: bytes | None, user_data: Any) -> None:
            llama_message(level, text)

        _native_callback = llama_cpp.llama_log_callback(callback)
        llama_cpp.llama_log_set(_native_callback, ctypes.c_void_p(0))
