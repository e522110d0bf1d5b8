"""What the outbox hands out: frozen snapshots of rows, and the one timestamp format.

Times are stored as UTC text in one fixed format with microseconds
(``2025-01-31T12:00:00.000000Z``), so SQLite compares and sorts them as plain strings and an
index on them is an index in time order. Every time the store writes goes through
:func:`fmt_time`; nothing else ever lands in a time column.

Neither dataclass carries the placeholder map: it holds PII, stays sealed in state.db and is
only returned, decrypted, by :meth:`Outbox.mapping` to the code that restores an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from appliance.clock import format_precise
from appliance.errors import OutboxError
from appliance.schema import OUTBOX_LIVE_STATES, OUTBOX_STATES

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

STATES: tuple[str, ...] = OUTBOX_STATES
LIVE_STATES: tuple[str, ...] = OUTBOX_LIVE_STATES  # those that count against the cap
FINISHED_STATES: tuple[str, ...] = ("done", "failed", "expired")


class StateChoice(StrEnum):
    """A state as the CLI and the admin API take it (``--state``, ``?state=``)."""

    queued = "queued"
    sending = "sending"
    done = "done"
    failed = "failed"
    expired = "expired"


class FinishedChoice(StrEnum):
    """A state a purge may remove: FINISHED_STATES."""

    done = "done"
    failed = "failed"
    expired = "expired"


def fmt_time(moment: datetime) -> str:
    """`moment` as stored text; a naive datetime is refused (no guessing the zone)."""
    if moment.tzinfo is None:
        raise OutboxError(f"naive datetime {moment.isoformat()} given to the outbox; use UTC")
    return format_precise(moment)


def parse_time(text: str) -> datetime:
    """Any ISO 8601 time with a zone (``Z``, ``+00:00``, with or without fractions), in UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError) as e:
        raise OutboxError(f"not an ISO 8601 time: {text!r}") from e
    if moment.tzinfo is None:
        raise OutboxError(f"time without a zone: {text!r}; the outbox keeps UTC")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class OutboxItem:
    """One queued escalation as stored (without its placeholder map)."""

    id: str
    created_at: str
    priority: int
    expires_at: str
    upstream: str
    endpoint: str
    messages: tuple[dict[str, str], ...]
    params: dict[str, Any]
    model: str
    device: str | None
    sensitivity: str
    reasons: tuple[str, ...]
    local_answer: str | None  # in egress terms: placeholders where it quoted mapped PII
    confidence: float | None
    state: str
    attempts: int
    next_attempt_at: str
    last_error: str | None
    lease_owner: str | None
    lease_until: str | None
    size_bytes: int
    # why it is a calibration pair: "cascade" (low confidence), "audit" (a confident answer
    # sampled at audit_rate, never re-hydrated for anyone), None (neither)
    origin: str | None = None
    audit_rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "priority": self.priority,
            "expires_at": self.expires_at,
            "upstream": self.upstream,
            "endpoint": self.endpoint,
            "messages": [dict(m) for m in self.messages],
            "params": dict(self.params),
            "model": self.model,
            "device": self.device,
            "sensitivity": self.sensitivity,
            "reasons": list(self.reasons),
            "local_answer": self.local_answer,
            "confidence": self.confidence,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "lease_owner": self.lease_owner,
            "lease_until": self.lease_until,
            "size_bytes": self.size_bytes,
            "origin": self.origin,
            "audit_rate": self.audit_rate,
        }


@dataclass(frozen=True)
class OutboxResult:
    """An upstream's answer to an item, as it came (placeholders, not PII)."""

    id: str
    upstream: str
    model: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    finish_reason: str
    received_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "upstream": self.upstream,
            "model": self.model,
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "finish_reason": self.finish_reason,
            "received_at": self.received_at,
        }
