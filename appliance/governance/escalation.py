"""What the router hands to the upstream side, and what it expects back.

The router decides *whether* and *with what text* a request may leave the box; an
``Escalator`` decides *how*: answer now over a live uplink, or keep the item durably until
one appears (store-and-forward). The daemon's escalator is the outbox of the
store-and-forward issue; until one is configured, ``NoEscalator`` keeps everything local.

An ``Escalation`` carries the egress text exactly as it may leave (placeholders instead of
PII for a redacted class) and, separately, the placeholder map that turns an upstream's
answer back into the device's terms. The map holds PII: whoever stores it keeps it
encrypted at rest, and it never leaves the box.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from appliance.errors import EscalationUnavailable as EscalationUnavailable
from appliance.errors import UplinkError as UplinkError

# What of a device's request may reach an upstream or a file off the box (a USB batch), and
# nothing else: the messages' roles and contents, the stop strings, and three numbers. The
# texts among them (contents and stops) are classified and redacted alike before they are
# put in an `Escalation`; every other field a device sends (user, metadata, tools, names,
# seed, logit_bias, ...) stays on the box. The upstream clients and the batch format build
# their bodies from these fields of an `Escalation` only.
FORWARDED_FIELDS: tuple[str, ...] = (
    "messages.role",
    "messages.content",
    "stop",
    "max_tokens",
    "temperature",
    "top_p",
)

# Limits of a request that may leave, shared by the HTTP API (checked at the door: 400) and
# the sealed batch format, so that nothing the API accepted can block an export.
MAX_MESSAGES = 1024  # messages in one request
MAX_TEXT_CHARS = 4 * 1024 * 1024  # characters in one message's content
MAX_STOPS = 4  # stop strings in one request (OpenAI's own limit)
MAX_STOP_CHARS = 256  # characters in one stop string


@dataclass(frozen=True)
class Escalation:
    """One request on its way to an upstream, in the form that may leave the box."""

    id: str  # UUID: the escalation id the device sees, and the upstream Idempotency-Key
    created_at: str  # UTC, ISO 8601
    upstream: str  # the name of a config.toml [[upstreams]] entry
    endpoint: Literal["chat", "completion"]
    messages: tuple[Mapping[str, str], ...]  # role/content, exactly the egress text
    mapping: Mapping[str, str] = field(repr=False)  # placeholder -> original (PII: stays here)
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    model: str = ""  # the local model the device asked for
    device: str | None = None
    sensitivity: str = ""
    reasons: tuple[str, ...] = ()
    local_answer: str | None = None  # what the device got meanwhile (golden-set material)
    confidence: float | None = None
    priority: int = 0  # higher first
    # for ``appliance calibrate``: "cascade" (sent for its low confidence), "audit" (a
    # confident answer sampled at `audit_rate` to measure it; the device keeps its local
    # answer and never sees this item), None (neither, e.g. the upstream was asked first)
    origin: Literal["cascade", "audit"] | None = None
    audit_rate: float | None = None


@dataclass(frozen=True)
class UpstreamAnswer:
    """An upstream's answer, still in egress terms (placeholders, not PII)."""

    text: str
    upstream: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


class Escalator(Protocol):
    """The upstream side, as the router sees it."""

    def uplink_up(self, upstream: str) -> bool:
        """Whether `upstream` answered its last probe (cheap: no network call here)."""

    async def answer_now(self, item: Escalation, timeout_s: float) -> UpstreamAnswer:
        """Ask `item.upstream` now; keeps `item` first, and sends it at most once at a time.

        Raises ``UplinkError`` if no answer is to be had now (the item stays kept, to be
        answered later), ``EscalationUnavailable`` if nothing can keep it (nothing is sent).
        """

    async def enqueue(self, item: Escalation) -> None:
        """Keep `item` until it can be sent; durable when this returns.

        Raises ``EscalationUnavailable`` when nothing can keep it.
        """

    async def note_local(
        self, item: Escalation, local_answer: str, confidence: float | None
    ) -> None:
        """Add the local answer to a kept `item` that was stored before it existed."""


class NoEscalator:
    """No store-and-forward on this box: every uplink is down and nothing can be queued."""

    def uplink_up(self, upstream: str) -> bool:
        return False

    async def answer_now(self, item: Escalation, timeout_s: float) -> UpstreamAnswer:
        raise UplinkError("no uplink is configured on this box")

    async def enqueue(self, item: Escalation) -> None:
        raise EscalationUnavailable("store-and-forward is not configured on this box")

    async def note_local(
        self, item: Escalation, local_answer: str, confidence: float | None
    ) -> None:
        return None
