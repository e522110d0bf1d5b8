"""Which policy the daemon runs, and noticing when that changes.

The first of these that exists is the policy:

1. the active signed ``kind = "policy"`` bundle (the newest activated, if several);
2. ``policy_file`` in config.toml;
3. the packaged ``policies/default.toml``.

At start an invalid policy is an error (the daemon refuses to start); later, a policy that
fails to load is logged and the one in force stays, so a bad file dropped in the field never
leaves the box without a policy.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from appliance.bundles.manifest import POLICY_FILE
from appliance.errors import PolicyError
from appliance.home import Home
from appliance.policy.load import default_policy_path, parse_policy
from appliance.policy.schema import Policy
from appliance.settings import Settings
from appliance.state import open_state

log = logging.getLogger("appliance.policy")


@dataclass(frozen=True)
class PolicySource:
    path: Path
    origin: str  # "bundle NAME VERSION", "config policy_file", or "default"


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    source: PolicySource
    digest: str

    @property
    def label(self) -> str:
        """name@digest prefix: what the audit records as the deciding policy."""
        return f"{self.policy.name}@{self.digest[:12]}"


_ACTIVE_POLICY_BUNDLE = (
    "SELECT b.name, b.version FROM bundles b JOIN active_bundles a "
    "ON a.name = b.name AND a.version = b.version "
    "WHERE b.kind = 'policy' AND b.digest NOT IN (SELECT digest FROM revoked_bundles) "
    "ORDER BY a.activated_at DESC, b.sequence DESC LIMIT 1"
)


def _active_bundle(home: Home, read_only: bool) -> tuple[str, str] | None:
    if not read_only:
        db = open_state(home)
        try:
            return db.execute(_ACTIVE_POLICY_BUNDLE).fetchone()  # type: ignore[no-any-return]
        finally:
            db.conn.close()
    if not home.state_db.exists():
        return None
    conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=2.0)
    try:
        return conn.execute(_ACTIVE_POLICY_BUNDLE).fetchone()  # type: ignore[no-any-return]
    except sqlite3.OperationalError:  # a state.db without the bundle tables yet
        return None
    finally:
        conn.close()


def find_source(home: Home, settings: Settings, *, read_only: bool = False) -> PolicySource:
    """Where the policy in force comes from now (see the module docstring).

    `read_only`: look without ever writing state.db (``appliance status``).
    """
    active = _active_bundle(home, read_only)
    if active is not None:
        name, version = active
        path = home.bundle_dir(name, version) / "payload" / POLICY_FILE
        return PolicySource(path, f"bundle {name} {version}")
    if settings.policy_file:
        return PolicySource(Path(settings.policy_file), "config policy_file")
    return PolicySource(default_policy_path(), "default")


def load(source: PolicySource) -> LoadedPolicy:
    try:
        text = source.path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"cannot read the policy {source.path} ({source.origin}): {e}") from e
    policy = parse_policy(text, source=str(source.path))
    assert policy.digest is not None
    return LoadedPolicy(policy, source, policy.digest)


class ActivePolicy:
    """The policy in force; ``refresh`` follows changes, keeping the old one on failure."""

    def __init__(self, home: Home, settings: Settings) -> None:
        self.home, self.settings = home, settings
        self.current = load(find_source(home, settings))  # PolicyError: refuse to start
        self.error: str | None = None
        log.info("policy %s from %s", self.current.label, self.current.source.origin)

    @property
    def policy(self) -> Policy:
        return self.current.policy

    def refresh(self) -> bool:
        """Load the policy again if its source or bytes changed; True when it changed."""
        try:
            source = find_source(self.home, self.settings)
            candidate = load(source)
        except PolicyError as e:
            if self.error != str(e):
                log.error("policy not changed: %s (still in force: %s)", e, self.current.label)
            self.error = str(e)
            return False
        except Exception as e:  # state.db busy, a vanished file: try again next time
            log.warning("policy refresh skipped: %s", e)
            return False
        self.error = None
        if candidate.digest == self.current.digest and candidate.source == self.current.source:
            return False
        log.info(
            "policy %s from %s replaces %s",
            candidate.label,
            candidate.source.origin,
            self.current.label,
        )
        self.current = candidate
        return True
