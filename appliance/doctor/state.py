"""state.db's integrity, config.toml, and the policy in force."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from appliance.doctor.check import Check, Context
from appliance.errors import ApplianceError

INTEGRITY_ERRORS_SHOWN = 10  # integrity_check stops after this many problems


def check_database(ctx: Context) -> Iterator[Check]:
    db = ctx.home.state_db
    restore = (
        f"stop the daemon, move {db} (and its -wal and -shm files) aside and restore the last "
        f"backup; sqlite3 {db} .recover salvages what it can"
    )
    if ctx.state_error is not None:
        yield Check(
            "state.db",
            "fail",
            f"cannot open {db}: {ctx.state_error}",
            f"run the doctor as the service user (sudo appliance doctor); if it still fails, "
            f"{restore}",
        )
        return
    if ctx.conn is None:
        yield Check("state.db", "pass", "not created yet")
        return
    try:
        found = [
            row[0] for row in ctx.conn.execute(f"PRAGMA integrity_check({INTEGRITY_ERRORS_SHOWN})")
        ]
    except sqlite3.DatabaseError as e:  # "file is not a database", "disk image is malformed"
        found = [str(e)]
    if found == ["ok"]:
        yield Check("state.db", "pass", "integrity_check: ok")
    else:
        detail = "; ".join(line.replace("\n", " ") for line in found[:3])
        yield Check("state.db", "fail", f"integrity_check: {detail}", restore)


def check_config(ctx: Context) -> Iterator[Check]:
    from appliance.governance.active import load
    from appliance.policy_source import active_bundle, source_for

    config = ctx.home.config_file
    if ctx.settings is None:
        yield Check("config.toml", "fail", str(ctx.settings_error), f"correct {config}")
        return
    yield Check(
        "config.toml", "pass", f"{config} is valid" if config.exists() else "absent: defaults"
    )
    # Not governance.active.find_source: it opens state.db for writing (and would create it).
    try:
        active = active_bundle(ctx.conn) if ctx.conn is not None else None
    except sqlite3.DatabaseError as e:
        yield Check("policy", "fail", f"cannot read state.db: {e}", "see the state.db check")
        return
    source = source_for(ctx.home, ctx.settings.policy_file, active)
    try:
        loaded = load(source)
    except ApplianceError as e:
        if active is not None:
            fix = f"appliance bundle rollback {active[0]}, or install a newer signed policy bundle"
        elif ctx.settings.policy_file:
            fix = f"correct {source.path}, or policy_file in {config}"
        else:
            fix = "reinstall the appliance: its shipped default policy is damaged"
        yield Check("policy", "fail", str(e), fix)
        return
    yield Check("policy", "pass", f"{loaded.label} from {loaded.source.origin}")
