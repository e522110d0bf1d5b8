"""What ``appliance status`` shows: how often the answers kept at the threshold in force agree.

The audit samples are the only unbiased look at the confident answers the box keeps: each is
a confident local answer drawn at random (at ``audit_rate``) and answered by the upstream as
well. Over those at or above the threshold in force, weighted by 1/rate, the share whose
local answer matches the upstream's (normalised exact match: cheap, no model) with its 95%
Wilson interval; shown once at least ``MIN_AUDIT`` samples exist. One indexed read of the
audit items only (``outbox_audit``), so the screen stays fast with a large outbox.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from appliance.calibrate.estimate import effective_n, wilson
from appliance.governance.agreement import exact_match
from appliance.policy_source import PolicySummary

MIN_AUDIT = 10  # audit samples before an agreement is shown (calibrate's --min-audit default)
MEASURE = "normalised exact match"


def observed(conn: sqlite3.Connection | None, threshold: float | None) -> dict[str, Any] | None:
    """The agreement at `threshold` seen in the audit samples; None when there is nothing to
    say (no state.db, the cascade off, a state.db from before audit sampling)."""
    if conn is None or threshold is None:
        return None
    try:
        rows = conn.execute(
            "SELECT o.local_answer, r.text, o.audit_rate FROM outbox o "
            "JOIN outbox_results r ON r.id = o.id "
            "WHERE o.origin = 'audit' AND o.confidence >= ? AND o.state = 'done' "
            "AND o.local_answer IS NOT NULL AND o.audit_rate > 0",
            (threshold,),
        ).fetchall()
    except sqlite3.OperationalError as e:  # a daemon that has not migrated state.db yet
        if "no such" in str(e):
            return None
        raise
    document: dict[str, Any] = {
        "threshold": threshold,
        "measure": MEASURE,
        "audit_samples": len(rows),
        "needed": MIN_AUDIT,
        "agreement": None,
        "low": None,
        "high": None,
    }
    if len(rows) < MIN_AUDIT:
        return document
    weights = [1.0 / rate for _, _, rate in rows]
    agreeing = sum(
        w for w, (local, golden, _) in zip(weights, rows, strict=True) if exact_match(local, golden)
    )
    share = agreeing / sum(weights)
    low, high = wilson(share, effective_n(weights))
    document.update(agreement=round(share, 4), low=round(low, 4), high=round(high, 4))
    return document


def for_status(
    conn: sqlite3.Connection | None, policy: Callable[[], PolicySummary] | None
) -> dict[str, Any] | None:
    """`observed` at the threshold of the policy in force; None when that cannot be read (the
    status document reports an unreadable policy on its own)."""
    if policy is None:
        return None
    try:
        threshold = policy().confidence_threshold
    except Exception:  # reported as the policy's error elsewhere in the document
        return None
    return observed(conn, threshold)
