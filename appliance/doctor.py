"""`appliance doctor`: the slower checks of an install, each with pass/warn/fail and the fix.

Where ``appliance status`` answers "is it running well right now", the doctor answers "is
this install sound": the trust store and key files (present, owned, not writable or
readable by others), every installed bundle file against its manifest's SHA-256, state.db's
integrity, free disk, the clock (bundle expiry depends on it), and that config.toml and the
policy load. It only reads; state.db is opened read-only, so it can run beside the daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from appliance.errors import ApplianceError
from appliance.fsutil import sha256_file
from appliance.home import Home

Status = Literal["pass", "warn", "fail"]
GiB = 1024**3
MiB = 1024**2
DISK_WARN_PERCENT, DISK_WARN_BYTES = 10.0, 2 * GiB  # below either: warn
DISK_FAIL_PERCENT, DISK_FAIL_BYTES = 2.0, 256 * MiB  # below either: fail
CLOCK_FLOOR = datetime(2026, 1, 1, tzinfo=UTC)  # no box runs before this release was built
EXPIRY_WARNING = timedelta(days=7)
KEY_FILES = ("outbox.key", "identity/sign.key", "identity/box.key")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def _mode(info: os.stat_result) -> str:
    return f"{stat.S_IMODE(info.st_mode):04o}"


def _owner_problem(path: Path, info: os.stat_result) -> str | None:
    """Who must own the appliance's files: root when the doctor runs as root, else its user."""
    expected = os.geteuid()
    if info.st_uid != expected:
        return f"{path} is owned by uid {info.st_uid}, not {expected}"
    return None


# -- the checks ------------------------------------------------------------------------


def check_config(home: Home, conn: sqlite3.Connection | None) -> Iterator[Check]:
    from appliance.governance.active import load
    from appliance.policy_source import active_bundle, source_for
    from appliance.settings import load_settings

    try:
        settings = load_settings(home.config_file)
    except ApplianceError as e:
        yield Check("config.toml", "fail", str(e), f"fix {home.config_file} (the key named)")
        return
    yield Check("config.toml", "pass", f"{home.config_file} is valid (or absent: defaults)")
    try:
        active = active_bundle(conn) if conn is not None else None
        loaded = load(source_for(home, settings.policy_file, active))
    except (ApplianceError, sqlite3.DatabaseError) as e:
        yield Check(
            "policy", "fail", str(e), "appliance policy check --policy FILE shows every problem"
        )
        return
    yield Check("policy", "pass", f"{loaded.label} from {loaded.source.origin}")


def check_trust(home: Home) -> Iterator[Check]:
    from appliance.bundles.trust import load_store, store_dir

    folder = store_dir(home)
    if not folder.is_dir():
        yield Check(
            "trust store",
            "fail",
            f"{folder} is missing: no bundle can be installed",
            "appliance trust add PUBFILE (the publisher's public key)",
        )
        return
    try:
        store = load_store(home)
    except ApplianceError as e:
        yield Check("trust store", "fail", str(e), "replace or remove the unusable file named")
        return
    if not store.keys:
        yield Check(
            "trust store",
            "fail",
            f"no publisher keys in {folder}: no bundle can be installed",
            "appliance trust add PUBFILE",
        )
    else:
        yield Check(
            "trust store",
            "pass",
            f"{len(store.keys)} publisher key(s), threshold {store.threshold}",
        )
    problems = []
    for path in [folder, *sorted(folder.iterdir())]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            problems.append(f"{path} is a symbolic link")
            continue
        if info.st_mode & 0o022:
            problems.append(f"{path} is writable by group or others (mode {_mode(info)})")
        owner = _owner_problem(path, info)
        if owner:
            problems.append(owner)
    if problems:
        user = "root" if os.geteuid() == 0 else str(os.geteuid())
        yield Check(
            "trust store permissions",
            "fail",
            "; ".join(problems[:4]),
            f"chown -R {user} {folder} && chmod -R go-w {folder} (anyone who can write "
            "there can make the box trust their bundles)",
        )
    else:
        yield Check(
            "trust store permissions", "pass", "owned by this user, writable by no one else"
        )


def check_key_files(home: Home) -> Iterator[Check]:
    for name in KEY_FILES:
        path = home.root / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            yield Check(f"key {name}", "pass", "not created yet (made on first use)")
            continue
        if not stat.S_ISREG(info.st_mode):
            yield Check(
                f"key {name}",
                "fail",
                f"{path} is not a regular file",
                f"remove {path}; a new key is made on first use (what it sealed is lost)",
            )
        elif info.st_mode & 0o077:
            yield Check(
                f"key {name}",
                "fail",
                f"{path} has mode {_mode(info)}: readable by group or others",
                f"chmod 600 {path}",
            )
        elif owner := _owner_problem(path, info):
            yield Check(f"key {name}", "fail", owner, f"chown {os.geteuid()} {path}")
        else:
            yield Check(f"key {name}", "pass", f"mode {_mode(info)}")


def _open_state(home: Home) -> sqlite3.Connection | None:
    if not home.state_db.exists():
        return None
    return sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=10.0)


def _installed(conn: sqlite3.Connection | None) -> list[tuple[str, str, dict[str, Any], bool]]:
    """(name, version, manifest, active) of every installed bundle."""
    if conn is None:
        return []
    try:
        rows = conn.execute(
            "SELECT b.name, b.version, b.manifest, (a.version IS NOT NULL) FROM bundles b "
            "LEFT JOIN active_bundles a ON a.name = b.name AND a.version = b.version "
            "ORDER BY b.name, b.sequence"
        ).fetchall()
    except sqlite3.DatabaseError:  # no tables yet, or a damaged file (check_database says)
        return []
    return [(n, v, json.loads(m), bool(a)) for n, v, m, a in rows]


def check_bundles(home: Home, conn: sqlite3.Connection | None) -> Iterator[Check]:
    installed = _installed(conn)
    if not installed:
        yield Check("bundles", "pass", "none installed")
    for name, version, manifest, _active in installed:
        label = f"bundle {name} {version}"
        payload = home.bundle_dir(name, version) / "payload"
        listed = {entry["path"]: entry for entry in manifest.get("files", [])}
        problems = []
        for rel, entry in listed.items():
            path = payload / rel
            try:
                info = path.lstat()
            except FileNotFoundError:
                problems.append(f"{rel} is missing")
                continue
            if not stat.S_ISREG(info.st_mode):
                problems.append(f"{rel} is not a regular file")
            elif info.st_size != entry["size"]:
                problems.append(f"{rel} has {info.st_size} bytes, not {entry['size']}")
            elif sha256_file(path) != entry["sha256"]:
                problems.append(f"{rel} does not match its SHA-256")
        if payload.is_dir():
            for path in sorted(payload.rglob("*")):
                rel = path.relative_to(payload).as_posix()
                if rel not in listed and not (path.is_dir() and not path.is_symlink()):
                    problems.append(f"{rel} is not in the manifest")
        if problems:
            yield Check(
                label,
                "fail",
                "; ".join(problems[:4]) + ("" if len(problems) <= 4 else " …"),
                f"the files no longer match what was verified: appliance bundle rollback {name}, "
                f"then install {name} {version} again from its signed bundle file",
            )
        else:
            yield Check(label, "pass", f"{len(listed)} file(s) match their SHA-256")


def check_database(home: Home, conn: sqlite3.Connection | None) -> Iterator[Check]:
    if conn is None:
        yield Check("state.db", "pass", "not created yet")
        return
    try:
        found = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as e:
        found = [str(e)]
    if found == ["ok"]:
        yield Check("state.db", "pass", "integrity_check: ok")
    else:
        yield Check(
            "state.db",
            "fail",
            "integrity_check: " + "; ".join(found[:3]),
            "stop the daemon, move state.db (and -wal, -shm) aside, and restore the last "
            f"backup; sqlite3 {home.state_db} .recover salvages what it can",
        )


def check_disk(home: Home, usage: Callable[[Path], Any] = shutil.disk_usage) -> Iterator[Check]:
    total, _used, free = usage(home.root)
    percent = 100.0 * free / total if total else 0.0
    detail = f"{free / GiB:.1f} GiB ({percent:.0f}%) free in {home.root}"
    fix = (
        "appliance outbox purge (after appliance distill export), remove unused bundle "
        "versions, or grow the disk"
    )
    if percent < DISK_FAIL_PERCENT or free < DISK_FAIL_BYTES:
        yield Check("disk", "fail", detail, fix)
    elif percent < DISK_WARN_PERCENT or free < DISK_WARN_BYTES:
        yield Check("disk", "warn", detail, fix)
    else:
        yield Check("disk", "pass", detail)


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def check_clock(home: Home, conn: sqlite3.Connection | None, now: datetime) -> Iterator[Check]:
    from appliance.settings import load_settings

    try:
        skew = load_settings(home.config_file).bundles.limits.clock_skew_s
    except ApplianceError:
        skew = 300
    fix_clock = "set the clock: timedatectl set-time 'YYYY-MM-DD HH:MM:SS' (UTC), or an NTP source"
    installed = _installed(conn)
    newest = max(
        (_when(m.get("created")) for *_, m, _ in installed if m.get("created")), default=None
    )
    if now < CLOCK_FLOOR:
        yield Check(
            "clock", "fail", f"the clock says {now:%Y-%m-%d}, before this release", fix_clock
        )
    elif newest is not None and now + timedelta(seconds=skew) < newest:
        yield Check(
            "clock",
            "fail",
            f"the clock ({now:%Y-%m-%d %H:%M}) is behind the newest bundle's creation "
            f"({newest:%Y-%m-%d %H:%M}): expiry checks cannot be trusted",
            fix_clock,
        )
    else:
        yield Check("clock", "pass", f"{now:%Y-%m-%d %H:%M} UTC")
    for name, version, manifest, active in installed:
        expires = _when(manifest.get("expires"))
        if not active or expires is None:
            continue
        if expires <= now:
            yield Check(
                f"expiry {name} {version}",
                "fail",
                f"expired on {expires:%Y-%m-%d}",
                f"install a newer signed version of {name} from its publisher",
            )
        elif expires - now < EXPIRY_WARNING:
            yield Check(
                f"expiry {name} {version}",
                "warn",
                f"expires on {expires:%Y-%m-%d}",
                f"get a newer signed version of {name} from its publisher",
            )


def run_checks(
    home: Home,
    *,
    now: datetime | None = None,
    disk_usage: Callable[[Path], Any] = shutil.disk_usage,
) -> list[Check]:
    now = now or datetime.now(UTC)
    if not home.root.is_dir():
        return [
            Check(
                "home",
                "fail",
                f"APPLIANCE_HOME {home.root} does not exist",
                "set APPLIANCE_HOME to the box's home, or start the daemon once to create it",
            )
        ]
    checks: list[Check] = []
    conn = _open_state(home)
    try:
        checks += [
            *check_config(home, conn),
            *check_trust(home),
            *check_key_files(home),
            *check_database(home, conn),
            *check_bundles(home, conn),
            *check_clock(home, conn, now),
        ]
    finally:
        if conn is not None:
            conn.close()
    checks += check_disk(home, disk_usage)
    return checks
