"""Batch files on a stick: names, atomic writes, and the listing of a folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from appliance.errors import OfflineError
from appliance.fsutil import fsync_dir, replacing
from appliance.offline.envelope import SUFFIX, Header


def batch_name(header: Header) -> str:
    """``KIND-YYYYmmddTHHMMSS-SENDER8-BATCH8.sealed``: sorts by time, never collides."""
    stamp = "".join(ch for ch in header.created[:19] if ch.isalnum())
    return f"{header.kind}-{stamp}-{header.sender[:8]}-{header.batch_id[:8]}{SUFFIX}"


def write_batch(folder: Path, header: Header, data: bytes) -> Path:
    """Write one batch file completely (synced) under its final name, or not at all."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / batch_name(header)
        with replacing(target) as f:
            f.write(data)
        fsync_dir(folder)
    except OSError as e:
        raise OfflineError(f"cannot write to {folder}: {e.strerror}") from e
    return target


def batch_files(folder: Path) -> list[Path]:
    """The ``*.sealed`` files of `folder`, in name (so time) order; no links, no folders."""
    try:
        entries = sorted(folder.iterdir())
    except FileNotFoundError:
        raise OfflineError(f"{folder}: no such folder") from None
    except OSError as e:
        raise OfflineError(f"cannot read {folder}: {e.strerror}") from e
    return [
        p
        for p in entries
        if p.name.endswith(SUFFIX) and not p.name.startswith(".") and _plain_file(p)
    ]


TAKEN = ".taken"


def mark_taken(path: Path) -> str | None:
    """Rename a batch that was taken to ``NAME.taken``, so a second run skips it.

    A copy put back under the old name is still refused (the ledger knows its id); this
    only keeps an honest second run on the same stick quiet. Returns a warning on failure
    (a read-only stick), never raises: the batch *was* taken.
    """
    try:
        os.replace(path, path.with_name(path.name + TAKEN))
    except OSError as e:
        return f"{path.name}: taken, but could not be renamed to {path.name}{TAKEN}: {e.strerror}"
    return None


def peek_kind(data: bytes) -> str | None:
    """The kind a batch claims, unverified: only to skip the other direction's files."""
    try:
        kind = json.loads(data)["header"]["kind"]
    except (ValueError, KeyError, TypeError):
        return None
    return kind if isinstance(kind, str) else None


def _plain_file(path: Path) -> bool:
    try:
        return not path.is_symlink() and os.path.isfile(path)
    except OSError:
        return False
