"""What state.db knows about bundles: installed versions, active versions, floors, revocations.

Reads are plain queries; every change happens inside the caller's write transaction so that
one install (or activation, or revocation) commits as a whole.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

import sqlite_utils

from appliance.bundles.manifest import Manifest
from appliance.bundles.verify import VerifiedManifest
from appliance.state import utc_now


@dataclass(frozen=True)
class InstalledBundle:
    name: str
    version: str
    sequence: int
    kind: str
    digest: str
    signers: tuple[str, ...]
    created: str
    expires: str | None
    total_size: int
    installed_at: str
    active: bool
    revoked: bool
    manifest: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        del document["manifest"]
        document["size"] = document.pop("total_size")
        document["signers"] = list(self.signers)
        return document


_SELECT = """
SELECT b.*, (a.version IS NOT NULL) AS active, (r.digest IS NOT NULL) AS revoked
FROM bundles b
LEFT JOIN active_bundles a ON a.name = b.name AND a.version = b.version
LEFT JOIN revoked_bundles r ON r.digest = b.digest
"""


def _row(row: sqlite3.Row | tuple[Any, ...], columns: list[str]) -> InstalledBundle:
    data = dict(zip(columns, row, strict=True))
    return InstalledBundle(
        name=data["name"],
        version=data["version"],
        sequence=data["sequence"],
        kind=data["kind"],
        digest=data["digest"],
        signers=tuple(json.loads(data["signers"])),
        created=data["created"],
        expires=data["expires"],
        total_size=data["total_size"],
        installed_at=data["installed_at"],
        active=bool(data["active"]),
        revoked=bool(data["revoked"]),
        manifest=json.loads(data["manifest"]),
    )


def query(
    db: sqlite_utils.Database, where: str = "", params: tuple[Any, ...] = ()
) -> list[InstalledBundle]:
    cursor = db.execute(f"{_SELECT} {where} ORDER BY b.name, b.sequence", params)
    columns = [d[0] for d in cursor.description]
    return [_row(r, columns) for r in cursor.fetchall()]


def get(db: sqlite_utils.Database, name: str, version: str) -> InstalledBundle | None:
    found = query(db, "WHERE b.name = ? AND b.version = ?", (name, version))
    return found[0] if found else None


def active(db: sqlite_utils.Database, name: str) -> InstalledBundle | None:
    found = query(db, "WHERE b.name = ? AND a.version IS NOT NULL", (name,))
    return found[0] if found else None


def by_digest(db: sqlite_utils.Database, digest: str) -> InstalledBundle | None:
    found = query(db, "WHERE b.digest = ?", (digest,))
    return found[0] if found else None


def sequence_floors(db: sqlite_utils.Database) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in db.execute("SELECT name, floor FROM sequence_floors")}


def newest_created(db: sqlite_utils.Database) -> str | None:
    """The latest `created` of any installed bundle: the box's clock floor."""
    row = db.execute("SELECT max(created) FROM bundles").fetchone()
    return row[0] if row else None


def revoked_keys(db: sqlite_utils.Database) -> frozenset[str]:
    return frozenset(r[0] for r in db.execute("SELECT keyid FROM revoked_keys").fetchall())


def revoked_bundles(db: sqlite_utils.Database) -> frozenset[str]:
    return frozenset(r[0] for r in db.execute("SELECT digest FROM revoked_bundles").fetchall())


def record_install(conn: sqlite3.Connection, verified: VerifiedManifest) -> None:
    m: Manifest = verified.manifest
    conn.execute(
        "INSERT INTO bundles (name, version, sequence, kind, digest, manifest, signers, created,"
        " expires, total_size, installed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            m.name,
            m.version,
            m.sequence,
            m.kind,
            verified.digest,
            verified.raw.decode("ascii"),
            json.dumps(list(verified.signers)),
            m.created,
            m.expires,
            m.total_size,
            utc_now(),
        ),
    )
    conn.execute(
        "INSERT INTO sequence_floors (name, floor) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET floor = max(floor, excluded.floor)",
        (m.name, m.sequence),
    )


SWITCHED_FROM = "switched from "  # an activation event's reason: the version active before it
NOTHING = "nothing"  # ... when none was
NOT_ACTIVATED = "installed, not activated"  # an install event's reason with --no-activate


def switched_from(previous: str | None) -> str:
    return SWITCHED_FROM + (previous or NOTHING)


def set_active(conn: sqlite3.Connection, name: str, version: str) -> str | None:
    """Make `version` the active one of `name`; returns the version active before, if any."""
    row = conn.execute("SELECT version FROM active_bundles WHERE name = ?", (name,)).fetchone()
    conn.execute(
        "INSERT INTO active_bundles (name, version, activated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET version = excluded.version, "
        "activated_at = excluded.activated_at",
        (name, version, utc_now()),
    )
    return None if row is None else str(row[0])


def last_switch(db: sqlite_utils.Database, name: str) -> tuple[str, str] | None:
    """(version switched to, version switched from) of `name`'s latest recorded activation
    (install, activate, rollback); None before any was recorded with what it replaced."""
    row = db.execute(
        "SELECT version, reason FROM bundle_events WHERE name = ? AND outcome = 'accepted' "
        "AND action IN ('install', 'activate', 'rollback') AND reason LIKE ? "
        "ORDER BY id DESC LIMIT 1",
        (name, SWITCHED_FROM + "%"),
    ).fetchone()
    if row is None:
        return None
    return str(row[0]), str(row[1]).removeprefix(SWITCHED_FROM)


def delete(conn: sqlite3.Connection, name: str, version: str) -> None:
    """Forget an installed, inactive version (its floor stays: it cannot come back)."""
    conn.execute("DELETE FROM bundles WHERE name = ? AND version = ?", (name, version))


def record_revocation(conn: sqlite3.Connection, verified: VerifiedManifest) -> list[str]:
    """Store revoked keys and bundles; deactivate revoked active bundles. Returns their names."""
    revocation = verified.manifest.revocation
    assert revocation is not None
    now = utc_now()
    for keyid in revocation.keys:
        conn.execute(
            "INSERT OR IGNORE INTO revoked_keys (keyid, revoked_at, by_bundle) VALUES (?, ?, ?)",
            (keyid, now, verified.digest),
        )
    deactivated = []
    for bundle_digest in revocation.bundles:
        conn.execute(
            "INSERT OR IGNORE INTO revoked_bundles (digest, revoked_at, by_bundle)"
            " VALUES (?, ?, ?)",
            (bundle_digest, now, verified.digest),
        )
        row = conn.execute(
            "SELECT a.name FROM active_bundles a JOIN bundles b "
            "ON a.name = b.name AND a.version = b.version WHERE b.digest = ?",
            (bundle_digest,),
        ).fetchone()
        if row:
            conn.execute("DELETE FROM active_bundles WHERE name = ?", (row[0],))
            deactivated.append(row[0])
    return deactivated


def record_event(
    conn: sqlite3.Connection,
    action: str,
    outcome: str,
    *,
    name: str | None = None,
    version: str | None = None,
    digest: str | None = None,
    reason: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO bundle_events (at, action, outcome, name, version, digest, reason)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (utc_now(), action, outcome, name, version, digest, reason),
    )
