"""Small filesystem helpers: fsync of folders, read-only trees, forced removal, private files,
and opening a file that must be a regular one without blocking."""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

_SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages in the range; do not wait


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to begin writing this range to disk now (Linux; a no-op elsewhere).

    Writeback then overlaps with the hashing of the next chunks, so the closing fsync has
    little left to wait for. Durability still comes from that fsync, not from this call.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFDIR: "a folder",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class NotRegularFileError(OSError):
    """The path names a FIFO, a device, a socket or a folder, not a regular file."""

    def __init__(self, path: Path, mode: int) -> None:
        self.kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        super().__init__(f"{path} is {self.kind}, not a regular file")


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading; refuse anything else, and never block doing so.

    ``open()`` of a FIFO waits for a writer, for ever if none comes (holding whatever lock
    the caller holds); opening a device may have effects of its own. So the path is looked
    at first (a FIFO or device is never opened), then opened with ``O_NONBLOCK`` and the
    descriptor itself checked, which closes the race of a FIFO swapped in between.
    Raises NotRegularFileError, or the OSError of stat/open (FileNotFoundError …).
    """
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFileError(path, info.st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(path, info.st_mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


PRIVATE_FILE_MODE = 0o600


def make_private(path: Path, *, create: bool = True) -> None:
    """Make `path` a file only its owner can read: created 0600 if missing (when `create`),
    else its group and other bits taken off. The umask plays no part either way.

    An existing file is changed by path, never opened: closing any descriptor of an SQLite
    database drops every lock this process holds on it, including its open connections'.
    A symlink, or a file of another owner, is left as it is (``appliance doctor`` reports it).
    """
    if create:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.fchmod(fd, PRIVATE_FILE_MODE)
            finally:
                os.close(fd)
            return
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if (
        stat.S_ISREG(info.st_mode)
        and info.st_uid == os.geteuid()
        and stat.S_IMODE(info.st_mode) & 0o077
    ):
        os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)


def make_read_only(root: Path) -> None:
    """Files 0444, folders 0555, deepest first so the walk can finish."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)


def remove_tree(root: Path) -> None:
    """Remove a tree even when it was made read-only."""
    if root.is_symlink() or root.is_file():
        root.unlink()
        return
    if not root.exists():
        return
    for folder, _dirs, _files in os.walk(root):
        os.chmod(folder, stat.S_IRWXU)
    shutil.rmtree(root)


@contextmanager
def replacing(target: Path) -> Iterator[BinaryIO]:
    """Write a file beside `target`; rename it over `target` only once complete and synced."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path, chunk_bytes: int = 4 * 1024 * 1024) -> str:
    """SHA-256 of a whole file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
