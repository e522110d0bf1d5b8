"""Between Python and the outbox tables: column lists, the INSERT of an escalation, row decoding.

Kept apart from the store so the store reads as the queue's state machine (who may move an
item where, in which transaction) and this file as the one place that knows column order.
The sealed placeholder map goes in here as opaque bytes and never comes out: no decoded row
carries it. Every text column holds egress terms (placeholders, not PII): the messages and
the upstream's answer arrive that way, and the local answer is put in those terms here.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from appliance.errors import OutboxError
from appliance.governance.escalation import Escalation
from appliance.outbox.model import OutboxItem, OutboxResult, fmt_time

ITEM_COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "priority",
    "expires_at",
    "upstream",
    "endpoint",
    "messages",
    "params",
    "model",
    "device",
    "sensitivity",
    "reasons",
    "local_answer",
    "confidence",
    "state",
    "attempts",
    "next_attempt_at",
    "last_error",
    "lease_owner",
    "lease_until",
    "size_bytes",
    "origin",
    "audit_rate",
)
RESULT_COLUMNS: tuple[str, ...] = (
    "id",
    "upstream",
    "model",
    "text",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "finish_reason",
    "received_at",
)
_INSERT_COLUMNS: tuple[str, ...] = (
    *ITEM_COLUMNS[:14],
    "mapping_sealed",
    "state",
    "attempts",
    "next_attempt_at",
    "origin",
    "audit_rate",
    "size_bytes",  # last: enqueue reads it as row[-1]
)

ITEMS = ", ".join(ITEM_COLUMNS)
RESULTS = ", ".join(RESULT_COLUMNS)
INSERT_ITEM = (
    f"INSERT INTO outbox ({', '.join(_INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})"
)
INSERT_RESULT = (
    f"INSERT INTO outbox_results ({RESULTS}) VALUES ({', '.join('?' * len(RESULT_COLUMNS))}) "
    "ON CONFLICT (id) DO NOTHING"
)

# One encoder, built once: json.dumps() with options builds a new one on every call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prefixed(columns: Sequence[str], alias: str) -> str:
    """``a.x, a.y, …``: the columns of one side of a join."""
    return ", ".join(f"{alias}.{c}" for c in columns)


def check_id(item_id: str) -> None:
    """Refuse an id that is not a UUID: it becomes an HTTP header and a file name upstream."""
    try:
        uuid.UUID(item_id)
    except (TypeError, ValueError, AttributeError):
        raise OutboxError(f"escalation id {item_id!r} is not a UUID") from None


def in_egress_terms(text: str | None, mapping: Mapping[str, str]) -> str | None:
    """`text` with each original value of `mapping` replaced by its placeholder.

    The local model answered the device's own prompt, so its answer may quote the very PII
    that redaction kept from leaving ("Dear Jordan Blake, …"); stored as is it would sit in
    clear in state.db beside the sealed map. ``pii.rehydrate(text, mapping)`` restores it.
    PII the model derived rather than quoted (a first name alone) is not caught here.
    """
    if not text or not mapping:
        return text
    by_value = {value: token for token, value in mapping.items() if value}
    if not by_value:
        return text
    # Longest first, so a value that contains another is replaced whole.
    pattern = re.compile("|".join(re.escape(v) for v in sorted(by_value, key=len, reverse=True)))
    return pattern.sub(lambda m: by_value[m.group()], text)


def insert_values(
    item: Escalation,
    sealed: bytes,
    created: datetime,
    expires: datetime,
    next_attempt: str,
) -> tuple[Any, ...]:
    """The INSERT_ITEM values of a new queued `item`; size_bytes (last) is what the cap counts."""
    messages = _ENCODER.encode([dict(m) for m in item.messages])
    params = _ENCODER.encode(
        {
            "max_tokens": item.max_tokens,
            "temperature": item.temperature,
            "top_p": item.top_p,
            "stop": list(item.stop),
        }
    )
    size = len(messages.encode()) + len(params.encode()) + len(sealed)
    return (
        item.id,
        fmt_time(created),
        int(item.priority),
        fmt_time(expires),
        item.upstream,
        item.endpoint,
        messages,
        params,
        item.model,
        item.device,
        item.sensitivity,
        _ENCODER.encode(list(item.reasons)),
        in_egress_terms(item.local_answer, item.mapping),
        item.confidence,
        sealed,
        "queued",
        0,
        next_attempt,
        item.origin,
        item.audit_rate,
        size,
    )


def item_from_row(row: Sequence[Any]) -> OutboxItem:
    """An item from the ITEM_COLUMNS of a row, in that order."""
    return OutboxItem(
        id=row[0],
        created_at=row[1],
        priority=row[2],
        expires_at=row[3],
        upstream=row[4],
        endpoint=row[5],
        messages=tuple(json.loads(row[6])),
        params=json.loads(row[7]),
        model=row[8],
        device=row[9],
        sensitivity=row[10],
        reasons=tuple(json.loads(row[11])),
        local_answer=row[12],
        confidence=row[13],
        state=row[14],
        attempts=row[15],
        next_attempt_at=row[16],
        last_error=row[17],
        lease_owner=row[18],
        lease_until=row[19],
        size_bytes=row[20],
        origin=row[21],
        audit_rate=row[22],
    )


def result_from_row(row: Sequence[Any]) -> OutboxResult:
    """A result from the RESULT_COLUMNS of a row, in that order."""
    return OutboxResult(*row)
