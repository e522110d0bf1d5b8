"""The running daemon's record in APPLIANCE_HOME: where it listens, and which process it is.

``appliance serve`` writes ``daemon.json`` once its socket listens (before any model loads)
and removes it on a clean exit; ``appliance status`` reads it, so a daemon started with
``--port 9000`` is found without the flag. The record is written atomically (a 0600 temp
file, synced, renamed into place) and names the process by pid *and* start time: a record
left by a daemon that was killed, or whose pid now belongs to another process, is stale
and is never taken for a running daemon.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from appliance.fsutil import fsync_dir
from appliance.home import Home

START_TIME_SLACK_S = 1.0  # seconds: a process's start time, read twice, may differ this much


@dataclass(frozen=True)
class DaemonRecord:
    pid: int
    started: float  # the process's start time (psutil's create_time), seconds since the epoch
    host: str
    port: int
    version: str

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "url": self.url}


def _start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # someone else's process: its start time cannot be read
        return -1.0


def this_process(host: str, port: int, version: str) -> DaemonRecord:
    started = _start_time(os.getpid())
    return DaemonRecord(os.getpid(), started or 0.0, host, port, version)


def write(home: Home, record: DaemonRecord) -> None:
    """Put `record` in place atomically: readers see the old file or the new one, whole."""
    target = home.daemon_file
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    data = json.dumps(asdict(record), sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask did
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def read(home: Home) -> DaemonRecord | None:
    """The record as written; None when there is none or it is unreadable."""
    try:
        with open(home.daemon_file, "rb") as f:
            data = json.loads(f.read(64 * 1024))
        return DaemonRecord(
            pid=int(data["pid"]),
            started=float(data["started"]),
            host=str(data["host"]),
            port=int(data["port"]),
            version=str(data["version"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_running(record: DaemonRecord) -> bool:
    """The process that wrote `record` still runs (the same pid, started at the same time)."""
    started = _start_time(record.pid)
    if started is None:
        return False
    if started < 0:  # exists, but not ours to inspect: trust the pid
        return True
    return abs(started - record.started) <= START_TIME_SLACK_S


def running(home: Home) -> DaemonRecord | None:
    """The record of a daemon that still runs; None when absent or stale."""
    record = read(home)
    return record if record is not None and is_running(record) else None


def remove(home: Home, record: DaemonRecord) -> None:
    """Remove the record if it is still `record` (a newer daemon's is left alone)."""
    if read(home) == record:
        home.daemon_file.unlink(missing_ok=True)
