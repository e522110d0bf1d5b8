"""Files of the home: who may write them, the trusted keys, the secret key files, free disk."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

from appliance.bundles.trust import load_store, store_dir
from appliance.doctor.check import Check, Context, mode, ownership_problems, summarize, user_name
from appliance.errors import TrustError
from appliance.offline.identity import KEY_BYTES as IDENTITY_KEY_BYTES
from appliance.outbox.crypto import KEY_BYTES as OUTBOX_KEY_BYTES
from appliance.outbox.crypto import KEY_FILE as OUTBOX_KEY_FILE

KiB, MiB, GiB = 1024, 1024**2, 1024**3
DISK_WARN_FREE_PERCENT = 10.0  # percent of the filesystem: below it, warn
DISK_WARN_FREE_BYTES = 2 * GiB  # bytes: below it, warn
DISK_FAIL_FREE_PERCENT = 2.0  # percent: below it, fail
DISK_FAIL_FREE_BYTES = 256 * MiB  # bytes: below it, fail

# Secret keys the appliance makes on first use (keyfile.py), relative to the home: size in bytes.
SECRET_KEYS = {
    OUTBOX_KEY_FILE: OUTBOX_KEY_BYTES,
    "identity/sign.key": IDENTITY_KEY_BYTES,
    "identity/box.key": IDENTITY_KEY_BYTES,
}


def check_trust(ctx: Context) -> Iterator[Check]:
    """Publisher keys that parse, enough of them for the threshold, writable by no one else."""
    folder = store_dir(ctx.home)
    if not folder.is_dir():
        yield Check(
            "trust store",
            "fail",
            f"{folder} is missing: no bundle can be installed",
            "appliance trust add PUBFILE (the publisher's public key)",
        )
        return
    try:
        store = load_store(ctx.home)
    except TrustError as e:
        yield Check(
            "trust store",
            "fail",
            str(e),
            f"replace the file named with the publisher's .pub, or move it out of {folder}",
        )
    else:
        revoked = _revoked_keys(ctx) & set(store.keys)
        usable = len(store.keys) - len(revoked)
        if not store.keys:
            yield Check(
                "trust store",
                "fail",
                f"no publisher keys in {folder}: no bundle can be installed",
                "appliance trust add PUBFILE (the publisher's public key)",
            )
        elif usable < store.threshold:
            yield Check(
                "trust store",
                "fail",
                f"{usable} usable key(s) ({len(revoked)} revoked) but threshold "
                f"{store.threshold}: no bundle can be installed",
                f"appliance trust add PUBFILE, or lower threshold in {folder / 'trust.toml'}",
            )
        else:
            yield Check(
                "trust store",
                "pass",
                f"{len(store.keys)} publisher key(s), threshold {store.threshold}",
            )
    problems = ownership_problems([folder, *sorted(folder.iterdir())], ctx)
    if problems:
        linked = any(p.endswith("symbolic link") for p in problems)
        links = " and replace each link with the file it points to" if linked else ""
        yield Check(
            "trust store permissions",
            "fail",
            summarize(problems),
            f"{ctx.sudo}chown -R {ctx.owner_name} {folder} && {ctx.sudo}chmod -R go-w {folder}"
            f"{links}: whoever can write there can make the box trust their bundles",
        )
    else:
        yield Check(
            "trust store permissions",
            "pass",
            f"owned by {ctx.owner_name}, writable by no one else",
        )


def _revoked_keys(ctx: Context) -> frozenset[str]:
    if ctx.conn is None:
        return frozenset()
    try:
        return frozenset(r[0] for r in ctx.conn.execute("SELECT keyid FROM revoked_keys"))
    except sqlite3.DatabaseError:  # no tables yet, or a damaged file: the state.db check says
        return frozenset()


def check_home(ctx: Context) -> Iterator[Check]:
    """Whoever can write the home, bundles/, config.toml or state.db controls what runs."""
    home = ctx.home
    paths = [home.root, home.bundles_dir, home.root / "identity", home.config_file, home.state_db]
    problems = ownership_problems([p for p in paths if os.path.lexists(p)], ctx)
    if problems:
        named = " ".join(str(p) for p in paths if os.path.lexists(p))
        yield Check(
            "home permissions",
            "fail",
            summarize(problems),
            f"{ctx.sudo}chown {ctx.owner_name} {named} && {ctx.sudo}chmod go-w {named}",
        )
    else:
        yield Check("home permissions", "pass", f"{home.root} is writable by no one else")


def _key_files(ctx: Context) -> list[Path]:
    """The known secret keys, then any other *.key in the home (bundle payloads excepted)."""
    root = ctx.home.root
    found = [root / name for name in SECRET_KEYS]
    for folder, subfolders, files in os.walk(root):
        if Path(folder) == root and ctx.home.bundles_dir.name in subfolders:
            subfolders.remove(ctx.home.bundles_dir.name)  # checked against their manifests
        subfolders.sort()
        found += [Path(folder) / f for f in sorted(files) if f.endswith(".key")]
    return list(dict.fromkeys(found))


def check_key_files(ctx: Context) -> Iterator[Check]:
    """Secret keys: plain files, mode 0600 (no group or other bits), of the right size."""
    for path in _key_files(ctx):
        rel = path.relative_to(ctx.home.root).as_posix()
        name = f"key {rel}"
        try:
            info = path.lstat()
        except FileNotFoundError:
            yield Check(name, "pass", "not created yet (made on first use)")
            continue
        size = SECRET_KEYS.get(rel)
        if not stat.S_ISREG(info.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
            yield Check(
                name,
                "fail",
                f"{path} is {what}",
                f"put the key file itself at {path} (chmod 600), or move it aside: "
                "a new key is made on first use (what the old one sealed is lost)",
            )
        elif info.st_mode & 0o077:
            yield Check(
                name,
                "fail",
                f"{path} has mode {mode(info)}: group or others can read it",
                f"{ctx.sudo}chmod 600 {path}",
            )
        elif info.st_uid not in ctx.owners:
            yield Check(
                name,
                "fail",
                f"{path} is owned by {user_name(info.st_uid)}, not {ctx.owner_name}",
                f"{ctx.sudo}chown {ctx.owner_name} {path}",
            )
        elif size is not None and info.st_size != size:
            yield Check(
                name,
                "fail",
                f"{path} holds {info.st_size} bytes, not {size}: the appliance refuses it",
                f"move {path} aside: a new key is made on first use (what the old one "
                "sealed is lost)",
            )
        else:
            yield Check(name, "pass", f"mode {mode(info)}, owned by {user_name(info.st_uid)}")


def check_disk(ctx: Context) -> Iterator[Check]:
    total, _used, free = ctx.disk_usage(ctx.home.root)
    percent = 100.0 * free / total if total else 0.0
    detail = f"{free / GiB:.1f} GiB ({percent:.0f}%) free in {ctx.home.root}"
    fix = (
        f"appliance outbox purge; move bundle files out of {ctx.home.inbox_dir}/installed "
        "and refused (installed bundles do not need them); or grow the disk"
    )
    if percent < DISK_FAIL_FREE_PERCENT or free < DISK_FAIL_FREE_BYTES:
        yield Check("disk", "fail", detail, fix)
    elif percent < DISK_WARN_FREE_PERCENT or free < DISK_WARN_FREE_BYTES:
        yield Check("disk", "warn", detail, fix)
    else:
        yield Check("disk", "pass", detail)
