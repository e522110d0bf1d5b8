"""What a batch carries once opened: requests (box -> relay) and results (relay -> box).

Both sides validate what they decrypt with these models even though it was signed by a
known peer: a bug or a compromised peer must not be able to put anything but well-formed
items into an outbox. Requests carry egress text only (placeholders, not PII): the
placeholder maps stay sealed on the box, and the local answers stay there too.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from appliance.errors import OfflineError
from appliance.governance.escalation import (
    MAX_MESSAGES,
    MAX_STOP_CHARS,
    MAX_TEXT_CHARS,
    Escalation,
    UpstreamAnswer,
)
from appliance.outbox.model import OutboxItem, OutboxResult

# The API checks the same limits at the door (see escalation.py), so an item it accepted
# always fits a batch.
_Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
_Id = Annotated[str, Field(min_length=36, max_length=36)]


_M = TypeVar("_M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError("not a UUID") from None


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: _Text


class Params(_Strict):
    max_tokens: int = Field(default=256, ge=1, le=1_000_000)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    # 16: room above the API's 4 for a relay that takes batches from older boxes
    stop: list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]] = Field(
        default_factory=list, max_length=16
    )


class Request(_Strict):
    id: _Id
    created_at: str
    priority: int = 0
    upstream: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    endpoint: Literal["chat", "completion"]
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    params: Params
    sensitivity: str = ""

    _check_id = field_validator("id")(_uuid)


class Answer(_Strict):
    text: _Text
    upstream: str
    model: str
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    finish_reason: str = "stop"


class Result(_Strict):
    id: _Id
    # done: answered; failed: the upstream refused it for good; retry: try again later
    outcome: Literal["done", "failed", "retry"]
    error: Annotated[str, Field(max_length=2048)] | None = None
    answer: Answer | None = None

    _check_id = field_validator("id")(_uuid)


class Requests(_Strict):
    requests: list[Request]


class Results(_Strict):
    results: list[Result]


def parse(model: type[_M], payload: bytes, name: str) -> _M:
    try:
        return model.model_validate(json.loads(payload))
    except (UnicodeDecodeError, json.JSONDecodeError, ValidationError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OfflineError(f"{name}: refused: the payload is malformed: {first}") from None


def encode(model: BaseModel) -> bytes:
    return json.dumps(model.model_dump(mode="json"), separators=(",", ":")).encode("utf-8")


def request_of(item: OutboxItem) -> Request:
    """An outbox item as it travels: the egress text and the sampling parameters."""
    params: dict[str, Any] = item.params
    return Request(
        id=item.id,
        created_at=item.created_at,
        priority=item.priority,
        upstream=item.upstream,
        # only the pipeline writes it, with 'chat' or 'completion' (an Escalation's endpoint)
        endpoint=item.endpoint,  # type: ignore[arg-type]
        messages=[Message.model_validate(m) for m in item.messages],
        params=Params(
            max_tokens=int(params.get("max_tokens", 256)),
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            stop=list(params.get("stop", ())),
        ),
        sensitivity=item.sensitivity,
    )


def escalation_of(request: Request) -> Escalation:
    """A relayed request as the relay's outbox keeps it (no map: it never left the box)."""
    return Escalation(
        id=request.id,
        created_at=request.created_at,
        upstream=request.upstream,
        endpoint=request.endpoint,
        messages=tuple(m.model_dump() for m in request.messages),
        mapping={},
        max_tokens=request.params.max_tokens,
        temperature=request.params.temperature,
        top_p=request.params.top_p,
        stop=tuple(request.params.stop),
        sensitivity=request.sensitivity,
        priority=request.priority,
    )


def upstream_answer(answer: Answer) -> UpstreamAnswer:
    return UpstreamAnswer(
        text=answer.text,
        upstream=answer.upstream,
        model=answer.model,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        finish_reason=answer.finish_reason,
    )


def answer_of(result: OutboxResult) -> Answer:
    """A stored upstream answer as a result batch carries it (cost stays each side's own)."""
    return Answer(
        text=result.text,
        upstream=result.upstream,
        model=result.model,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        finish_reason=result.finish_reason,
    )
