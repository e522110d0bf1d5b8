"""Reading payload bytes: hash each file while (optionally) copying it, in one pass.

The bytes that are hashed are the bytes that are written, from one buffer. Hashing runs on a
worker thread (hashlib releases the GIL on large buffers) while the main thread writes the
same buffer and reads the next one, so a copy costs about max(hash, read+write), not the sum.
A file is never read past its declared size: a larger member is refused from its header.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from appliance.bundles.archive import Member
from appliance.bundles.manifest import FileEntry
from appliance.errors import (
    FileTooLargeError,
    HashMismatchError,
    PayloadError,
    TruncatedBundleError,
)
from appliance.fsutil import start_writeback

Advance = Callable[[int], None]  # called with the number of bytes just processed
Progress = Callable[[int, int], None]  # called with (bytes done so far, total bytes)


def reporter(progress: Progress | None, total: int) -> Advance | None:
    """Turn per-chunk advances into (done, total) reports for a progress display."""
    if progress is None:
        return None
    done = 0
    progress(0, total)

    def advance(count: int) -> None:
        nonlocal done
        done += count
        progress(done, total)

    return advance


def check_declared_size(entry: FileEntry, member: Member) -> None:
    if member.size > entry.size:
        raise FileTooLargeError(
            f"payload/{entry.path} holds {member.size} bytes, more than the {entry.size} "
            "declared in the manifest; refused before reading it"
        )
    if member.size < entry.size:
        raise PayloadError(
            f"payload/{entry.path} holds {member.size} bytes, fewer than the {entry.size} "
            "declared in the manifest"
        )


def hash_member(
    source: BinaryIO,
    member: Member,
    entry: FileEntry,
    *,
    dest: BinaryIO | None,
    pool: ThreadPoolExecutor,
    chunk_bytes: int,
    progress: Advance | None = None,
) -> None:
    """Hash exactly `entry.size` bytes of `member`, writing them to `dest` when given."""
    check_declared_size(entry, member)
    source.seek(member.offset)
    hasher = hashlib.sha256()
    buffers = (bytearray(chunk_bytes), bytearray(chunk_bytes))
    pending: Future[None] | None = None
    remaining = entry.size
    written = 0
    turn = 0
    while remaining:
        view = memoryview(buffers[turn])[: min(chunk_bytes, remaining)]
        # the bundle file, opened "rb": a BufferedReader has readinto, BinaryIO's stub has not
        got = source.readinto(view)  # type: ignore[attr-defined]
        if not got:
            raise TruncatedBundleError(f"bundle is truncated inside payload/{entry.path}")
        view = view[:got]
        if pending is not None:
            pending.result()  # the other buffer is free again once its hash is done
        pending = pool.submit(hasher.update, view)
        if dest is not None:
            dest.write(view)
            start_writeback(dest.fileno(), written, got)
        written += got
        remaining -= got
        turn ^= 1
        if progress is not None:
            progress(got)
    if pending is not None:
        pending.result()
    if not hmac.compare_digest(hasher.hexdigest(), entry.sha256):
        raise HashMismatchError(
            f"payload/{entry.path} does not match its SHA-256 in the manifest "
            "(tampered, corrupted or taken from another bundle)"
        )
