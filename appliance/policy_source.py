"""Which policy file is in force, found without loading any of the policy machinery.

The first of these that exists is the policy: the active signed ``kind = "policy"`` bundle
(the newest activated), ``policy_file`` in config.toml, the shipped ``policies/default.toml``.
``appliance.governance.active`` loads and validates it; ``appliance status`` only peeks
(``peek``: name, digest, daily budget) and must start fast, so this module imports nothing
heavier than sqlite3 and tomllib.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from appliance.errors import PolicyError
from appliance.home import Home

POLICY_FILE = "policy.toml"  # the payload file of a policy bundle (bundles.manifest agrees)
SHIPPED_PACKAGE = "appliance.policies"  # the repository's policies/ folder, once installed
DEFAULT_POLICY_FILE = "default.toml"
MAX_POLICY_BYTES = 1024 * 1024  # bytes: a policy is a page of settings, not a data set

ACTIVE_POLICY_BUNDLE = (
    "SELECT b.name, b.version FROM bundles b JOIN active_bundles a "
    "ON a.name = b.name AND a.version = b.version "
    "WHERE b.kind = 'policy' AND b.digest NOT IN (SELECT digest FROM revoked_bundles) "
    "ORDER BY a.activated_at DESC, b.sequence DESC LIMIT 1"
)


@dataclass(frozen=True)
class PolicySource:
    path: Path
    origin: str  # "bundle NAME VERSION", "config policy_file", or "default"


@dataclass(frozen=True)
class PolicySummary:
    """What status shows of the policy in force (from the daemon, or a peek at the file)."""

    name: str
    digest: str
    origin: str
    daily_usd: float | None
    # the cascade's threshold (None: the cascade is off), for the agreement observed at it
    confidence_threshold: float | None = None


DEFAULT_THRESHOLD = 0.25  # policy.schema.CascadeSettings' default (a test holds them equal)


def shipped_file(name: str) -> Path:
    try:
        folder = resources.files(SHIPPED_PACKAGE)
    except ModuleNotFoundError:
        # A source checkout on sys.path, or an editable install made before the package
        # mapping existed: policies/ sits beside the appliance package.
        folder = Path(__file__).resolve().parents[1] / "policies"
    candidate = folder / name
    if not isinstance(candidate, Path) or not candidate.is_file():
        raise PolicyError(f"the shipped policy {name} is missing from this installation")
    return candidate


def active_bundle(conn: sqlite3.Connection) -> tuple[str, str] | None:
    try:
        row = conn.execute(ACTIVE_POLICY_BUNDLE).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # a state.db without the bundle tables yet
            return None
        raise


def source_for(home: Home, policy_file: str, active: tuple[str, str] | None) -> PolicySource:
    if active is not None:
        name, version = active
        return PolicySource(
            home.bundle_dir(name, version) / "payload" / POLICY_FILE, f"bundle {name} {version}"
        )
    if policy_file:
        return PolicySource(Path(policy_file), "config policy_file")
    return PolicySource(shipped_file(DEFAULT_POLICY_FILE), "default")


def source_in_force(home: Home, policy_file: str) -> PolicySource:
    """Where the policy in force comes from, with state.db opened read-only (sqlite3.Error
    for an unusable one): an active policy bundle, else `policy_file`, else the default."""
    active = None
    if home.state_db.exists():
        conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=2.0)
        try:
            active = active_bundle(conn)
        finally:
            conn.close()
    source = source_for(home, policy_file, active)
    return source


def peek(home: Home, policy_file: str) -> PolicySummary:
    """Name, digest and daily budget of the policy in force, state.db opened read-only.

    Only TOML is parsed here; full validation is the daemon's (``governance.active``).
    """
    source = source_in_force(home, policy_file)
    try:
        with source.path.open("rb") as f:
            raw = f.read(MAX_POLICY_BYTES + 1)
        data = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PolicyError(f"cannot read the policy {source.path} ({source.origin}): {e}") from e
    budgets = data.get("budgets") or {}
    daily = budgets.get("daily_usd") if isinstance(budgets, dict) else None
    cascade = data.get("cascade") or {}
    cascade = cascade if isinstance(cascade, dict) else {}
    threshold = cascade.get("confidence_threshold", DEFAULT_THRESHOLD)
    on = cascade.get("enabled", True) is not False and isinstance(threshold, int | float)
    return PolicySummary(
        name=str(data.get("name", "?")),
        digest=hashlib.sha256(raw).hexdigest(),
        origin=source.origin,
        daily_usd=float(daily) if isinstance(daily, int | float) else None,
        confidence_threshold=float(threshold) if on else None,
    )
