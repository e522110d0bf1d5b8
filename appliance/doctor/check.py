"""What every doctor check shares: its result, and what it may look at (all injectable)."""

from __future__ import annotations

import os
import pwd
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from appliance.bundles.records import InstalledBundle
from appliance.home import Home
from appliance.settings import Settings

Status = Literal["pass", "warn", "fail"]


DiskUsage = Callable[[Path], tuple[int, int, int]]  # shutil.disk_usage: total, used, free bytes


@dataclass(frozen=True)
class Check:
    """One result: what was checked, pass/warn/fail, one line on what was found, and the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Context:
    """The home and what was read from it once, for every check."""

    home: Home
    now: datetime
    euid: int  # whose files these should be (see `owners`)
    disk_usage: DiskUsage
    conn: sqlite3.Connection | None  # state.db, read-only; None when absent or unopenable
    state_error: str | None  # why state.db could not be opened
    settings: Settings | None  # None when config.toml does not load
    settings_error: str | None
    installed: list[InstalledBundle] = field(default_factory=list)
    installed_error: str | None = None  # state.db could not be read

    @property
    def owners(self) -> frozenset[int]:
        """Who may own the trust store and key files.

        The user running the doctor; as root, also the owner of APPLIANCE_HOME: a box set up
        as in docs/operations.md runs the daemon as the service user `appliance`, which owns
        every file, and nobody but root and that user can change them.
        """
        if self.euid != 0:
            return frozenset({self.euid})
        return frozenset({0, self.home.root.stat().st_uid})

    @property
    def sudo(self) -> str:
        """What a chown or chmod fix starts with: a field tech runs it from their own shell."""
        return "" if self.euid == 0 else "sudo "

    @property
    def owner_name(self) -> str:
        """The user a `chown` fix should name."""
        uid = self.euid if self.euid != 0 else self.home.root.stat().st_uid
        return user_name(uid)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def mode(info: os.stat_result) -> str:
    return f"{stat.S_IMODE(info.st_mode):04o}"


def ownership_problems(paths: list[Path], ctx: Context) -> list[str]:
    """Links, files writable by group or others, and files owned by someone unexpected."""
    problems = []
    for path in paths:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            problems.append(f"{path} is a symbolic link")
            continue
        if info.st_mode & 0o022:
            problems.append(f"{path} is writable by group or others (mode {mode(info)})")
        if info.st_uid not in ctx.owners:
            problems.append(f"{path} is owned by {user_name(info.st_uid)}, not {ctx.owner_name}")
    return problems


def summarize(problems: list[str], shown: int = 4) -> str:
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f"; and {more} more" if more > 0 else "")
