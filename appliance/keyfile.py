"""Secret key files in APPLIANCE_HOME: fixed size, mode 0600, created once and atomically.

Used for the outbox map key and the box's own identity keys. A key file is refused when it
is a link, readable by group or others, or of the wrong size, with the command that fixes it.
Creation never replaces a key another process made first (see :func:`load_or_create`).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.fsutil import fsync_dir


def read_key(path: Path, size: int, what: str, error: type[ApplianceError]) -> bytes:
    """The `size` key bytes in `path`; FileNotFoundError when absent, `error` when unusable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise error(
                f"{path} is accessible to group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        if info.st_size != size:
            raise error(f"{path} holds {info.st_size} bytes, not a {size}-byte {what}")
        key = os.read(fd, size + 1)
    finally:
        os.close(fd)
    if len(key) != size:
        raise error(f"{path} holds {len(key)} bytes, not a {size}-byte {what}")
    return key


def create_key(path: Path, key: bytes, error: type[ApplianceError]) -> None:
    """Write `key` to `path` atomically, never replacing one another process created first.

    The temp file is created 0600 (never briefly readable), synced, then *linked* into place:
    unlike a rename, a link fails if the key already exists, so two processes starting at
    once cannot end up with two different keys. The loser just reads the winner's.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise error(f"cannot create {path}: {e.strerror}") from e
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask did
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # another process won the race: use its key
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise error(f"cannot create {path}: {e.strerror}") from e
            # A filesystem without hard links: a plain rename, after a last look.
            if path.exists():
                return
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def load_or_create(
    path: Path,
    size: int,
    what: str,
    error: type[ApplianceError],
    generate: Callable[[], bytes] | None = None,
) -> bytes:
    """The key in `path`, made first (random `size` bytes, or `generate()`) if absent."""
    try:
        return read_key(path, size, what, error)
    except FileNotFoundError:
        pass
    create_key(path, generate() if generate else secrets.token_bytes(size), error)
    return read_key(path, size, what, error)
