"""The OpenAI-compatible routes: models, chat completions, completions, embeddings.

Every inference response says where it was answered: the ``X-Appliance-Route`` header and an
``appliance`` key in the body (always ``local`` here; the governance layer adds the others).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from appliance.api import formats, governed, inference
from appliance.api.errors import APIError, limit_exceeded
from appliance.api.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from appliance.api.security import require_infer
from appliance.runtime.backend import GenerationRequest, GenerationResult, TokenEvent
from appliance.runtime.manager import ModelManager

router = APIRouter(dependencies=[Depends(require_infer)])

ROUTE_HEADER = "X-Appliance-Route"
GENERATIVE = ("chat", "completion")


def _manager(request: Request) -> ModelManager:
    return request.app.state.models  # type: ignore[no-any-return]


def _envelope(worker_spec: Any, route: str = "local") -> dict[str, Any]:
    return {
        "route": route,
        "model_version": worker_spec.version,
        "bundle_digest": worker_spec.digest,
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    specs = [s for s in _manager(request).specs() if s.role in ("chat", "completion", "embedding")]
    return {
        "object": "list",
        "data": [
            {
                "id": s.name,
                "object": "model",
                "created": 0,
                "owned_by": "appliance",
                "appliance": {
                    "version": s.version,
                    "role": s.role,
                    "format": s.format,
                    "adapter_digest": s.adapter_digest,
                },
            }
            for s in specs
        ],
    }


def _max_tokens(requested: int | None, request: Request) -> int:
    limits = request.app.state.settings.server
    if requested is None:
        return int(limits.default_max_tokens)
    if requested > limits.max_tokens:
        raise limit_exceeded("max_tokens", requested, limits.max_tokens, "tokens", "max_tokens")
    return requested


async def _worker(request: Request, model: str) -> Any:
    manager = _manager(request)
    loaded = manager.loaded_worker(model)
    if loaded is not None:
        return loaded  # the common case: no hop to a thread
    # Off the event loop: a model unloaded for idleness is loaded again here (seconds).
    return await asyncio.to_thread(manager.worker, model)


async def _generative_worker(request: Request, model: str) -> Any:
    worker = await _worker(request, model)
    if worker.spec.role not in GENERATIVE:
        raise APIError(
            400,
            f"{model} is a {worker.spec.role} model; it does not generate text",
            code="wrong_model_role",
            param="model",
        )
    return worker


def _governor(request: Request) -> governed.Governor:
    return request.app.state.governor  # type: ignore[no-any-return]


async def _respond(
    request: Request,
    worker: Any,
    inbound: governed.Inbound,
    fmt: formats.Format,
    stream: bool,
    include_usage: bool,
) -> Any:
    """Answer `inbound` under the policy, as one JSON document or as an SSE stream."""
    gov = _governor(request)
    limits = request.app.state.settings.server
    label = gov.active.current.label
    plan = await gov.plan(inbound)

    asked = governed.UpstreamFirst()
    if plan.skip_local:
        # the limits hold whichever way the request goes (the local path checks them too)
        await inference.check_prompt(worker, inbound.source, limits)
        asked = await gov.try_upstream_first(inbound, plan)
        if asked.decided is not None:
            return _upstream_answer(asked.decided, worker, label, fmt, stream, include_usage)

    inbound.generation.confidence = gov.wants_confidence(plan)
    hold = stream and gov.must_hold_stream(plan)
    events = inference.generate(
        worker, inbound.source, inbound.generation, limits, stream=stream and not hold
    )
    if not stream or hold:
        content, result = await governed.collect(events)
        decided = await gov.judge(inbound, plan, content, result, streamed=False, first=asked)
        envelope = decided.envelope(worker, label)
        if decided.route == "refused":
            raise governed.refusal(decided, envelope)
        if decided.route == "escalated":
            return _upstream_answer(decided, worker, label, fmt, stream, include_usage)
        usage = formats.usage_of(result.prompt_tokens, result.completion_tokens)
        finish = formats.finish_of(result.finish_reason)
        return _finished(
            fmt, decided, envelope, result.text, content, finish, usage, stream, include_usage
        )

    first = await anext(events)  # errors before the first token still get a JSON error

    async def live() -> AsyncIterator[str]:
        content: list[TokenEvent] = []
        judged = False
        try:
            for chunk in fmt.opening():
                yield formats.sse(chunk)
            item: TokenEvent | GenerationResult = first
            while not isinstance(item, GenerationResult):
                content.append(item)
                piece = fmt.piece(item.text, item)
                if piece is not None:
                    yield formats.sse(piece)
                item = await anext(events)
            decided = await gov.judge(inbound, plan, content, item, streamed=True, first=asked)
            judged = True
            yield formats.sse(
                fmt.closing(formats.finish_of(item.finish_reason), decided.envelope(worker, label))
            )
            if include_usage:
                yield formats.sse(
                    fmt.usage(formats.usage_of(item.prompt_tokens, item.completion_tokens))
                )
            yield "data: [DONE]\n\n"
        finally:
            if not judged:  # the client went away mid-stream: the decision is still audited
                gone = governed.Decided(
                    "local",
                    [*plan.reasons, *asked.reasons, "stream ended early"],
                    plan.classification,
                )
                gov.record(inbound, gone)

    return StreamingResponse(
        live(), media_type="text/event-stream", headers={ROUTE_HEADER: "local"}
    )


def _upstream_answer(
    decided: governed.Decided,
    worker: Any,
    label: str,
    fmt: formats.Format,
    stream: bool,
    include_usage: bool,
) -> Any:
    """The device's response when the upstream answered (text re-hydrated on the box)."""
    answer = decided.upstream_answer
    assert answer is not None
    envelope = decided.envelope(worker, label)
    usage = formats.usage_of(answer.prompt_tokens, answer.completion_tokens)
    finish = formats.finish_of(answer.finish_reason)
    return _finished(
        fmt, decided, envelope, decided.text, None, finish, usage, stream, include_usage
    )


def _finished(
    fmt: formats.Format,
    decided: governed.Decided,
    envelope: dict[str, Any],
    text: str,
    events: list[TokenEvent] | None,
    finish: str,
    usage: dict[str, int],
    stream: bool,
    include_usage: bool,
) -> Any:
    """A complete answer as one document, or replayed as a stream (`events` None: one piece)."""
    if not stream:
        document = {**fmt.document(text, finish, usage, events), "appliance": envelope}
        return JSONResponse(document, headers=decided.headers())

    async def chunks() -> AsyncIterator[str]:
        for chunk in fmt.opening():
            yield formats.sse(chunk)
        pieces = (
            [fmt.piece(text, None)] if events is None else [fmt.piece(e.text, e) for e in events]
        )
        for piece in pieces:
            if piece is not None:
                yield formats.sse(piece)
        yield formats.sse(fmt.closing(finish, envelope))
        if include_usage:
            yield formats.sse(fmt.usage(usage))
        yield "data: [DONE]\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream", headers=decided.headers())


def _device(request: Request) -> str | None:
    return getattr(request.state, "device", None)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    worker = await _generative_worker(request, body.model)
    wants_logprobs = body.logprobs or bool(body.top_logprobs)
    generation = GenerationRequest(
        prompt="",
        max_tokens=_max_tokens(body.max_completion_tokens or body.max_tokens, request),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stops,
        logprobs=wants_logprobs,
        top_logprobs=body.top_logprobs or 0,
    )
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    inbound = governed.Inbound(
        endpoint="chat",
        model=body.model,
        texts=[m["content"] for m in messages],
        roles=[m["role"] for m in messages],
        source=inference.PromptSource(messages=messages),
        generation=generation,
        escalate=body.appliance.escalate,
        device=_device(request),
    )
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    fmt = formats.ChatFormat(base, wants_logprobs)
    return await _respond(request, worker, inbound, fmt, body.stream, include_usage)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    worker = await _generative_worker(request, body.model)
    generation = GenerationRequest(
        prompt="",
        max_tokens=_max_tokens(body.max_tokens, request),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stops,
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
    )
    inbound = governed.Inbound(
        endpoint="completion",
        model=body.model,
        texts=[body.prompt_text],
        roles=["user"],
        source=inference.PromptSource(text=body.prompt_text),
        generation=generation,
        escalate=body.appliance.escalate,
        device=_device(request),
    )
    base = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
    }
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    prefix = body.prompt_text if body.echo else ""
    fmt = formats.CompletionFormat(base, body.logprobs is not None, prefix)
    return await _respond(request, worker, inbound, fmt, body.stream, include_usage)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
    limits = request.app.state.settings.server
    texts = body.texts
    if len(texts) > limits.max_embedding_inputs:
        raise limit_exceeded("input", len(texts), limits.max_embedding_inputs, "texts", "input")
    worker = await _worker(request, body.model)
    if worker.spec.role != "embedding":
        raise APIError(
            400,
            f"{body.model} is a {worker.spec.role} model; it makes no embeddings",
            code="wrong_model_role",
            param="model",
        )
    vectors, tokens = await inference.embed(worker, texts, limits)
    if body.encoding_format == "base64":
        import base64
        import struct

        data = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
    else:
        data = vectors  # type: ignore[assignment]
    document = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)],
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "appliance": _envelope(worker.spec),
    }
    return JSONResponse(document, headers={ROUTE_HEADER: "local"})
