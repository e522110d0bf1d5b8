"""What a bundle file holds and who signed it, before anyone trusts it (``bundle info``).

Read-only in every way: the file goes through the same hardened reader as an install (the
strict tar scan, the manifest and signatures under their limits), nothing is copied,
installed or trusted, and state.db is opened read-only (or not at all on a fresh home).
Payload hashes are not checked here: ``bundle verify`` does that.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.bundles import trust
from appliance.bundles.keys import PublicKey
from appliance.bundles.kinds import KINDS
from appliance.bundles.manifest import digest, parse_manifest, parse_signatures
from appliance.bundles.reader import BundleReader
from appliance.bundles.verify import TrustSnapshot, count_signers
from appliance.errors import ApplianceError
from appliance.home import Home
from appliance.settings import BundleLimits


def _read_only_state(home: Home) -> sqlite3.Connection | None:
    if not home.state_db.exists():
        return None
    conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=2.0)
    conn.execute("PRAGMA query_only = ON")
    return conn


def _column(conn: sqlite3.Connection | None, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    if conn is None:
        return []
    try:
        return [r[0] for r in conn.execute(sql, args).fetchall()]
    except sqlite3.OperationalError:  # a home older than the table
        return []


def _signers(
    raw: bytes, signatures: list[tuple[str, bytes]], snapshot: TrustSnapshot
) -> list[dict[str, Any]]:
    valid = count_signers(raw, signatures, snapshot)
    found = []
    for keyid, _ in signatures:
        key = snapshot.keys.get(keyid)
        if key is None:
            state = "unknown key (not in the trust store)"
        elif keyid in snapshot.revoked_keys:
            state = "REVOKED"
        elif keyid in valid:
            state = "valid, trusted"
        else:
            state = "INVALID signature"
        found.append(
            {
                "keyid": keyid,
                "name": key.name if key is not None else None,
                "trusted": key is not None and keyid not in snapshot.revoked_keys,
                "valid": keyid in valid,
                "state": state,
            }
        )
    return found


def describe(path: Path, home: Home, limits: BundleLimits) -> dict[str, Any]:
    """The bundle's manifest, payload files, signers against this box's trust store, and
    what installing it would meet (threshold, sequence floor, expiry). Raises on a file
    that is no well-formed bundle."""
    with BundleReader(path, limits) as reader:
        manifest = parse_manifest(reader.manifest_raw, limits.manifest_max_bytes)
        parsed = parse_signatures(
            reader.signatures_raw, limits.signatures_max_bytes, limits.max_signatures
        )
        try:
            reader.check_listing(manifest)
            listing: str | None = None
        except ApplianceError as e:
            listing = str(e)
        raw = reader.manifest_raw
    store = trust.load_store(home)
    conn = _read_only_state(home)
    try:
        revoked_keys = frozenset(_column(conn, "SELECT keyid FROM revoked_keys"))
        revoked_bundles = frozenset(_column(conn, "SELECT digest FROM revoked_bundles"))
        floors = _column(conn, "SELECT floor FROM sequence_floors WHERE name = ?", (manifest.name,))
        floor = int(floors[0]) if floors else 0
        installed = _column(conn, "SELECT version FROM bundles WHERE digest = ?", (digest(raw),))
    finally:
        if conn is not None:
            conn.close()
    snapshot = TrustSnapshot(store.keys, store.threshold, revoked_keys, revoked_bundles)
    signatures = [(s.keyid, bytes.fromhex(s.sig)) for s in parsed.signatures]
    signers = _signers(raw, signatures, snapshot)
    valid = sum(1 for s in signers if s["valid"])
    bundle_digest = digest(raw)
    document: dict[str, Any] = {
        "file": str(path),
        "name": manifest.name,
        "version": manifest.version,
        "sequence": manifest.sequence,
        "kind": manifest.kind,
        "what_it_does": KINDS[manifest.kind].activation,
        "created": manifest.created,
        "expires": manifest.expires,
        "expired": manifest.expires_at is not None and manifest.expires_at <= datetime.now(UTC),
        "requires": manifest.requires,
        "description": manifest.description,
        "digest": bundle_digest,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in manifest.files],
        "total_size": manifest.total_size,
        "listing_problem": listing,
        "payload_checked": False,  # sizes from the manifest; `bundle verify` hashes them
        "signers": signers,
        "threshold": store.threshold,
        "valid_signatures": valid,
        "threshold_met": valid >= store.threshold,
        "revoked": bundle_digest in revoked_bundles,
        "installed_floor": floor,
        "would_be_rollback": manifest.sequence <= floor and not installed,
        "installed_as": installed[0] if installed else None,
        "manifest": manifest.to_json_obj(),
    }
    if manifest.keyring is not None:
        keys = [PublicKey.from_raw(bytes.fromhex(k.public), k.name) for k in manifest.keyring.keys]
        own = TrustSnapshot({k.keyid: k for k in keys}, manifest.keyring.threshold, revoked_keys)
        own_valid = len(count_signers(raw, signatures, own))
        document["keyring"] = {
            "threshold": manifest.keyring.threshold,
            "keys": [{"keyid": k.keyid, "name": k.name, "public": k.raw.hex()} for k in keys],
            "own_valid_signatures": own_valid,
            "own_threshold_met": own_valid >= manifest.keyring.threshold,
        }
    if manifest.revocation is not None:
        document["revocation"] = manifest.revocation.model_dump()
    return document

