"""Lease owners: who holds a lease, and whether that process is certainly gone.

An owner is ``ROLE-PID-TOKEN@HOST/BOOT.PIDNS`` (the escalator appends ``/now``): the process
id, a random token for this process, the host name, the kernel's boot id and the pid
namespace the pid is counted in (containers count their own). A lease normally
runs out on its own (``lease_until``), but that can be minutes: it must outlast the longest
upstream request. When the holder is *certainly* dead, its requests are over (the kernel
closed their sockets), so its items may be taken at once without risking a second request
in flight for the same escalation. Certainly dead means, on this host only:

- another boot id: the machine restarted since (a power cut), every process of then is gone;
- this process's own pid with another token: a previous daemon whose pid was reused by us;
- a pid that no longer exists.

Anything else (another host or another pid namespace sharing the file, a pid that exists, an
owner written in an older format) is left to its lease: waiting is safe, guessing is not.
"""

from __future__ import annotations

import os
import socket
import uuid
from functools import cache
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
PID_NAMESPACE = Path("/proc/self/ns/pid")
TOKEN = uuid.uuid4().hex[:8]  # this process


@cache
def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()[:8]
    except OSError:
        return ""


@cache
def _pid_namespace() -> str:
    try:  # "pid:[4026531836]"
        return "".join(c for c in os.readlink(PID_NAMESPACE) if c.isdigit())
    except OSError:
        return ""


def _host() -> str:
    return socket.gethostname().replace("/", "_").replace("@", "_")


def new_owner(role: str) -> str:
    """The owner name for a sender of this process (`role`: "daemon", "cli", ...)."""
    return f"{role}-{os.getpid()}-{TOKEN}@{_host()}/{_boot_id()}.{_pid_namespace()}"


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return True
    return True


def is_gone(owner: str) -> bool:
    """True only when the process that wrote `owner` is certainly no longer running."""
    ident, at, place = owner.partition("@")
    if not at:
        return False  # an older format: no host to compare
    host, _, rest = place.partition("/")
    boot, _, namespace = rest.split("/", 1)[0].partition(".")
    parts = ident.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or host != _host():
        return False
    pid, token = int(parts[1]), parts[2]
    here = _boot_id()
    if boot and here and boot != here:
        return True  # the machine restarted since
    if namespace != _pid_namespace():
        return False  # its pids are not ours to look up (another container)
    if pid == os.getpid():
        return token != TOKEN
    return not _pid_exists(pid)
