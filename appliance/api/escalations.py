"""``GET /v1/escalations/{id}``: where an escalated request stands, and its answer once back.

The answer is re-hydrated here, on the box, at the moment the device fetches it: the outbox
keeps the upstream's text with placeholders and the placeholder map encrypted, and only the
response to the device that asked holds the original values. A device sees only its own
escalations (another id is 404, as if it did not exist); an admin token sees all.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from appliance.api.errors import APIError
from appliance.api.security import require_infer
from appliance.pii.redact import rehydrate

router = APIRouter(dependencies=[Depends(require_infer)])


def _not_found(escalation_id: str) -> APIError:
    return APIError(
        404, f"no escalation {escalation_id}", type="not_found_error", code="escalation_not_found"
    )


@router.get("/v1/escalations/{escalation_id}")
async def get_escalation(escalation_id: str, request: Request) -> dict[str, Any]:
    outbox = getattr(request.app.state, "outbox", None)
    if outbox is None:
        raise _not_found(escalation_id)
    item = await asyncio.to_thread(outbox.get, escalation_id)
    device = getattr(request.state, "device", None)
    admin = getattr(request.state, "scope", None) == "admin"
    if item is None or (not admin and item.device != device):
        raise _not_found(escalation_id)
    document: dict[str, Any] = {
        "id": item.id,
        "object": "appliance.escalation",
        "state": item.state,
        "created_at": item.created_at,
        "upstream": item.upstream,
        "attempts": item.attempts,
        "model": item.model,
    }
    if item.state in ("failed", "expired") and item.last_error:
        document["error"] = item.last_error
    result = await asyncio.to_thread(outbox.result, escalation_id)
    if result is not None:
        mapping = await asyncio.to_thread(outbox.mapping, escalation_id)
        document["answer"] = {
            "content": rehydrate(result.text, mapping),
            "model": result.model,
            "finish_reason": result.finish_reason,
            "received_at": result.received_at,
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            },
        }
    return document
