"""Small durable-filesystem helpers: fsync of folders, read-only trees, forced removal."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages in the range; do not wait


def _load_sync_file_range():  # type: ignore[no-untyped-def]
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
