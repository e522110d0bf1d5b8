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
from dataclasses import dataclass

from appliance.errors import PolicyError
from appliance.home import Home
from appliance.policy.load import parse_policy
from appliance.policy.schema import Policy
from appliance.policy_source import PolicySource, PolicySummary, active_bundle, source_for
from appliance.settings import Settings
from appliance.state import open_state

log = logging.getLogger("appliance.policy")


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    source: PolicySource
    digest: str

    def summary(self) -> PolicySummary:
        cascade = self.policy.cascade
        return PolicySummary(
            self.policy.name,
            self.digest,
            self.source.origin,
            self.policy.budgets.daily_usd,
            cascade.confidence_threshold if cascade.enabled else None,
        )

    @property
    def label(self) -> str:
        """name@digest prefix: what the audit records as the deciding policy."""
        return f"{self.policy.name}@{self.digest[:12]}"


def find_source(home: Home, settings: Settings) -> PolicySource:
    """Where the policy in force comes from now (see the module docstring)."""
    db = open_state(home)
    try:
        active = active_bundle(db.conn)
    finally:
        db.conn.close()
    return source_for(home, settings.policy_file, active)


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
