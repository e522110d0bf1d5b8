"""Installed bundles: every file against the manifest verified at install; the clock and expiry."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance.bundles.archive import MANIFEST, SIGNATURES
from appliance.bundles.kinds import RUNTIME_KINDS
from appliance.bundles.manifest import digest, parse_timestamp
from appliance.bundles.records import InstalledBundle
from appliance.doctor.check import Check, Context, summarize
from appliance.fsutil import sha256_file
from appliance.settings import BundleLimits

PAYLOAD = "payload"
BUNDLE_FOLDER_ENTRIES = frozenset({MANIFEST, SIGNATURES, PAYLOAD})
# No box runs before this release was built: a clock earlier than this is certainly wrong.
CLOCK_FLOOR = datetime(2025, 1, 1, tzinfo=UTC)
EXPIRY_WARNING = timedelta(days=7)  # an active bundle expiring sooner than this: warn
SET_THE_CLOCK = "set the clock (UTC): timedatectl set-time 'YYYY-MM-DD HH:MM:SS', or an NTP source"


def check_bundles(ctx: Context) -> Iterator[Check]:
    if ctx.installed_error is not None:
        yield Check(
            "bundles",
            "fail",
            f"cannot read the installed bundles from state.db: {ctx.installed_error}",
            "see the state.db check",
        )
        return
    if not ctx.installed:
        yield Check("bundles", "pass", "none installed")
    for bundle in ctx.installed:
        problems = _bundle_problems(ctx, bundle)
        label = f"bundle {bundle.name} {bundle.version}"
        if problems:
            yield Check(label, "fail", summarize(problems), _repair(bundle))
        else:
            files = len(bundle.manifest.get("files", []))
            yield Check(label, "pass", f"manifest and {files} file(s) match their SHA-256")
    yield from _leftovers(ctx)


def _repair(bundle: InstalledBundle) -> str:
    # Installing the same bundle file again does not repair it: the installer sees a recorded
    # digest and answers "already installed" without touching the files.
    why = "its files no longer match what was verified at install: find out who changed them"
    if bundle.active:
        if bundle.kind in RUNTIME_KINDS:
            # the daemon checks every file it loads against the manifest (runtime.signed_files)
            why += (
                f"; the daemon refuses to load {bundle.name} {bundle.version} again (at its next "
                "start, swap or reload after an idle unload)"
            )
        return (
            f"appliance bundle rollback {bundle.name} (back to the previous version), or install "
            f"a newer signed version of {bundle.name}; {why}"
        )
    return f"do not activate {bundle.name} {bundle.version}: it is not in service; {why}"


def _bundle_problems(ctx: Context, bundle: InstalledBundle) -> list[str]:
    folder = ctx.home.bundle_dir(bundle.name, bundle.version)
    if not folder.is_dir():
        return [f"{folder} is missing"]
    problems = [
        f"{name} does not belong in the bundle folder"
        for name in sorted(os.listdir(folder))
        if name not in BUNDLE_FOLDER_ENTRIES
    ]
    manifest_file = folder / MANIFEST
    if not _is_file(manifest_file):
        problems.append(f"{MANIFEST} is missing")
    elif digest(manifest_file.read_bytes()) != bundle.digest:
        problems.append(f"{MANIFEST} differs from the one verified at install")
    if not _is_file(folder / SIGNATURES):
        problems.append(f"{SIGNATURES} is missing")
    payload = folder / PAYLOAD
    listed = {entry["path"]: entry for entry in bundle.manifest.get("files", [])}
    for rel, entry in listed.items():
        problems += _file_problems(payload / rel, rel, entry["size"], entry["sha256"])
    problems += [f"{PAYLOAD}/{rel} is not in the manifest" for rel in _unlisted(payload, listed)]
    return problems


def _is_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _file_problems(path: Path, rel: str, size: int, sha256: str) -> list[str]:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return [f"{PAYLOAD}/{rel} is missing"]
    if not stat.S_ISREG(info.st_mode):
        return [f"{PAYLOAD}/{rel} is not a regular file"]
    if info.st_size != size:
        return [f"{PAYLOAD}/{rel} has {info.st_size} bytes, not {size}"]
    if sha256_file(path) != sha256:
        return [f"{PAYLOAD}/{rel} does not match its SHA-256"]
    return []


def _unlisted(payload: Path, listed: dict[str, object]) -> list[str]:
    """Anything under payload/ that is neither a listed file nor a folder on the way to one."""
    found = []
    for folder, subfolders, files in os.walk(payload):  # never follows links
        for name in sorted(subfolders + files):
            path = Path(folder) / name
            if path.is_dir() and not path.is_symlink():
                continue  # an empty extra folder changes nothing the runtime reads
            rel = path.relative_to(payload).as_posix()
            if rel not in listed:
                found.append(rel)
    return sorted(found)


def _leftovers(ctx: Context) -> Iterator[Check]:
    """Version folders with no record: what an interrupted install leaves behind."""
    recorded = {(b.name, b.version) for b in ctx.installed}
    bundles_dir = ctx.home.bundles_dir
    if not bundles_dir.is_dir():
        return
    for name_dir in sorted(bundles_dir.iterdir()):
        if name_dir.name.startswith(".") or not name_dir.is_dir():
            continue
        for version_dir in sorted(name_dir.iterdir()):
            if (name_dir.name, version_dir.name) not in recorded:
                yield Check(
                    f"bundle folder {name_dir.name}/{version_dir.name}",
                    "warn",
                    f"{version_dir} is not recorded in state.db (an interrupted install)",
                    "nothing uses it; the next daemon start or appliance bundle install removes it",
                )


def check_clock(ctx: Context) -> Iterator[Check]:
    """Expiry checks trust the clock: it must not run behind the newest bundle installed."""
    limits = ctx.settings.bundles.limits if ctx.settings is not None else BundleLimits()
    skew = timedelta(seconds=limits.clock_skew_s)
    created = [parse_timestamp(b.created) for b in ctx.installed if b.created]
    newest = max(created, default=None)
    now = ctx.now
    if now < CLOCK_FLOOR:
        yield Check(
            "clock",
            "fail",
            f"the clock says {now:%Y-%m-%d %H:%M} UTC, before this release was built",
            SET_THE_CLOCK,
        )
    elif newest is not None and now + skew < newest:
        yield Check(
            "clock",
            "fail",
            f"the clock ({now:%Y-%m-%d %H:%M} UTC) is behind the newest bundle's creation "
            f"({newest:%Y-%m-%d %H:%M}): expiry checks cannot be trusted",
            SET_THE_CLOCK,
        )
    else:
        yield Check("clock", "pass", f"{now:%Y-%m-%d %H:%M} UTC")
    for bundle in ctx.installed:
        if not bundle.active or not bundle.expires:
            continue
        expires = parse_timestamp(bundle.expires)
        name = f"expiry {bundle.name} {bundle.version}"
        if expires <= now:
            yield Check(
                name,
                "fail",
                f"expired at {bundle.expires}; still active, but it can no longer be re-activated",
                f"install a newer signed version of {bundle.name} from its publisher",
            )
        elif expires - now < EXPIRY_WARNING:
            yield Check(
                name,
                "warn",
                f"expires at {bundle.expires}",
                f"get a newer signed version of {bundle.name} from its publisher",
            )
        else:
            yield Check(name, "pass", f"valid until {bundle.expires}")
