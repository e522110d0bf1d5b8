"""Pick up bundles dropped into ``inbox/`` or found on USB paths: verify, install, activate.

A bundle in ``inbox/`` is installed and then moved aside with its outcome: to
``inbox/installed/`` or ``inbox/refused/``, each with a ``<file>.result.json`` beside it. A
refused file is never retried; to retry, put it back into ``inbox/``. Files on USB paths are
never moved or modified (the stick may be read-only, and the operator keeps it): they are
installed in place, and the outcome is recorded in ``inbox/usb-seen/<key>.result.json`` so that
the same file is not retried on every scan. The key is the SHA-256 of the file's first MiB
and its size, so a file still growing is tried again once it has a new size.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bundles.installer import BundleManager
from appliance.bundles.outcome import Outcome
from appliance.errors import ApplianceError
from appliance.fsutil import open_regular, replacing

log = logging.getLogger("appliance.inbox")

SUFFIX = ".bundle"
RESULT_SUFFIX = ".result.json"
KEY_PREFIX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class InboxResult:
    source: Path
    moved_to: Path | None  # None for USB files, which are never moved
    outcome: Outcome | None  # set when installed (or already installed)
    error: str | None  # "ErrorClass: one-line message" when refused

    def to_json(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "moved_to": None if self.moved_to is None else str(self.moved_to),
            "outcome": None if self.outcome is None else self.outcome.to_json(),
            "error": self.error,
        }


def scan_once(
    manager: BundleManager, usb_paths: Sequence[Path] = (), settle_s: float = 2.0
) -> list[InboxResult]:
    """Handle every settled ``*.bundle`` in the inbox and on the USB paths; never raises per file.

    A file counts as still being written, and is skipped this time, while its mtime is within
    ``settle_s`` seconds of now (either side, so a stick whose clock was ahead is not stuck for
    hours). One stat is taken, not two ``settle_s`` apart: a copy that stalls for longer than
    ``settle_s`` is not detected, so writers should drop a dot-file and rename it when done.
    Hidden files (``.*``, e.g. temporaries and macOS ``._`` files), symlinks and anything but a
    regular file (a FIFO would block the scan, and with it model and policy refresh) are
    ignored; one swapped in after the listing is refused without blocking. A
    USB path that is missing or unreadable is skipped. If another scan of this home is under
    way, this one returns nothing.
    """
    inbox = manager.home.inbox_dir
    results: list[InboxResult] = []
    with open(inbox / ".scan.lock", "a+b") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return results
        now = time.time()
        for path in _candidates(inbox, now, settle_s):
            outcome, error = _install(manager, path)
            message = _describe(error)
            folder = inbox / ("installed" if outcome is not None else "refused")
            moved_to: Path | None = None
            try:
                moved_to = _move_aside(path, folder)
                result_file = moved_to.with_name(moved_to.name + RESULT_SUFFIX)
                _write_json(result_file, _record(outcome, error))
            except OSError as e:
                log.exception("cannot move %s aside", path)
                message = message or f"OSError: cannot move it to {folder}: {e.strerror}"
            results.append(InboxResult(path, moved_to, outcome, message))
        for usb in usb_paths:
            for path in _candidates(Path(usb), now, settle_s):
                try:
                    seen = inbox / "usb-seen" / (_usb_key(path) + RESULT_SUFFIX)
                except OSError:
                    continue  # the stick went away
                if seen.exists():
                    continue
                outcome, error = _install(manager, path)
                if error is not None and not path.exists():
                    continue  # pulled out mid-read: try again when it is back
                try:
                    seen.parent.mkdir(exist_ok=True)
                    _write_json(seen, {"source": str(path), **_record(outcome, error)})
                except OSError:
                    log.exception("cannot record %s as seen", path)
                results.append(InboxResult(path, None, outcome, _describe(error)))
    return results


def _candidates(folder: Path, now: float, settle_s: float) -> Iterator[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for path in entries:
        if path.name.startswith(".") or not path.name.endswith(SUFFIX):
            continue
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and abs(now - st.st_mtime) >= settle_s:
            yield path


def _install(manager: BundleManager, path: Path) -> tuple[Outcome | None, dict[str, str] | None]:
    try:
        return manager.install(path), None
    except ApplianceError as e:
        return None, {"error": _one_line(str(e)), "type": type(e).__name__}
    except Exception as e:
        log.exception("unexpected error installing %s", path)
        return None, {"error": _one_line(f"{type(e).__name__}: {e}"), "type": "InternalError"}


def _one_line(message: str) -> str:
    return " ".join(message.split())[:500] or "(no message)"


def _describe(error: dict[str, str] | None) -> str | None:
    if error is None:
        return None
    return f"{error['type']}: {error['error']}"


def _record(outcome: Outcome | None, error: dict[str, str] | None) -> dict[str, Any]:
    return outcome.to_json() if outcome is not None else dict(error or {})


def _move_aside(path: Path, folder: Path) -> Path:
    """Move into ``folder`` (same filesystem), adding ``-N`` to the name on a collision."""
    folder.mkdir(exist_ok=True)
    stem = path.name[: -len(SUFFIX)]
    target, n = folder / path.name, 0
    while target.exists() or target.with_name(target.name + RESULT_SUFFIX).exists():
        n += 1
        target = folder / f"{stem}-{n}{SUFFIX}"
    os.replace(path, target)
    return target


def _write_json(path: Path, document: dict[str, Any]) -> None:
    with replacing(path) as f:
        f.write((json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _usb_key(path: Path) -> str:
    with open_regular(path) as f:  # a FIFO swapped in after the listing must not block a scan
        head = f.read(KEY_PREFIX_BYTES)
        size = os.fstat(f.fileno()).st_size
    return f"{hashlib.sha256(head).hexdigest()}-{size}"
