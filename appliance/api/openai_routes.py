"""The OpenAI-compatible routes: models, chat completions, completions, embeddings.

Every inference response says where it was answered: the ``X-Appliance-Route`` header and an
``appliance`` key in the body (always ``local`` here; the governance layer adds the others).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from appliance.api import inference
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
                "appliance": {"version": s.version, "role": s.role, "format": s.format},
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


def _usage(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _finish(result: GenerationResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _chat_logprob(event: TokenEvent) -> dict[str, Any]:
    return {
        "token": event.token,
        "logprob": event.logprob,
        "bytes": list(event.token.encode("utf-8")),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
            for t, lp in event.top_logprobs
        ],
    }


async def _collect(
    events: AsyncIterator[TokenEvent | GenerationResult],
) -> tuple[list[TokenEvent], GenerationResult]:
    """All token events of a generation, and its result (for a non-streamed answer)."""
    content: list[TokenEvent] = []
    async for item in events:
        if isinstance(item, GenerationResult):
            return content, item
        content.append(item)
    raise RuntimeError("generation ended without a result")


def _sse(document: dict[str, Any]) -> str:
    return f"data: {json.dumps(document, separators=(',', ':'))}\n\n"


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
    source = inference.PromptSource(
        messages=[{"role": m.role, "content": m.text()} for m in body.messages]
    )
    events = inference.generate(
        worker, source, generation, request.app.state.settings.server, stream=body.stream
    )
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    envelope = _envelope(worker.spec)
    headers = {ROUTE_HEADER: "local"}
    base = {"id": ident, "created": created, "model": body.model}

    if body.stream:
        first = await anext(events)  # errors before the first token still get a JSON error

        async def stream() -> AsyncIterator[str]:
            opening = {"role": "assistant", "content": ""}
            yield _sse(
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "appliance": envelope,
                    "choices": [{"index": 0, "delta": opening, "finish_reason": None}],
                }
            )
            item: TokenEvent | GenerationResult = first
            while True:
                if isinstance(item, GenerationResult):
                    yield _sse(
                        {
                            **base,
                            "object": "chat.completion.chunk",
                            "appliance": envelope,
                            "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(item)}],
                        }
                    )
                    if body.stream_options and body.stream_options.include_usage:
                        yield _sse(
                            {
                                **base,
                                "object": "chat.completion.chunk",
                                "choices": [],
                                "usage": _usage(item),
                            }
                        )
                    break
                if item.text or (wants_logprobs and item.token_id >= 0):
                    choice: dict[str, Any] = {
                        "index": 0,
                        "delta": {"content": item.text},
                        "finish_reason": None,
                    }
                    if wants_logprobs and item.token_id >= 0:
                        choice["logprobs"] = {"content": [_chat_logprob(item)]}
                    yield _sse({**base, "object": "chat.completion.chunk", "choices": [choice]})
                item = await anext(events)
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    content, result = await _collect(events)
    logprobs = None
    if wants_logprobs:
        logprobs = {"content": [_chat_logprob(e) for e in content if e.token_id >= 0]}
    document = {
        **base,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": logprobs,
                "finish_reason": _finish(result),
            }
        ],
        "usage": _usage(result),
        "appliance": envelope,
    }
    return JSONResponse(document, headers=headers)


def _completion_logprobs(events: list[TokenEvent], offset: int) -> dict[str, Any]:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for event in events:
        if event.token_id < 0:
            continue
        offsets.append(offset)
        offset += len(event.token)
        tokens.append(event.token)
        token_logprobs.append(event.logprob)
        tops.append(dict(event.top_logprobs))
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


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
    source = inference.PromptSource(text=body.prompt_text)
    events = inference.generate(
        worker, source, generation, request.app.state.settings.server, stream=body.stream
    )
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    envelope = _envelope(worker.spec)
    headers = {ROUTE_HEADER: "local"}
    base = {"id": ident, "object": "text_completion", "created": created, "model": body.model}
    prefix = body.prompt_text if body.echo else ""

    if body.stream:
        first = await anext(events)

        async def stream() -> AsyncIterator[str]:
            item: TokenEvent | GenerationResult = first
            opened = False
            while True:
                if isinstance(item, GenerationResult):
                    yield _sse(
                        {
                            **base,
                            "appliance": envelope,
                            "choices": [
                                {
                                    "index": 0,
                                    "text": "",
                                    "logprobs": None,
                                    "finish_reason": _finish(item),
                                }
                            ],
                        }
                    )
                    if body.stream_options and body.stream_options.include_usage:
                        yield _sse({**base, "choices": [], "usage": _usage(item)})
                    break
                text = item.text if opened else prefix + item.text
                if text or (body.logprobs is not None and item.token_id >= 0):
                    logprobs = None
                    if body.logprobs is not None and item.token_id >= 0:
                        logprobs = _completion_logprobs([item], 0)
                    yield _sse(
                        {
                            **base,
                            "appliance": envelope,
                            "choices": [
                                {
                                    "index": 0,
                                    "text": text,
                                    "logprobs": logprobs,
                                    "finish_reason": None,
                                }
                            ],
                        }
                    )
                    opened = True
                item = await anext(events)
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    content, result = await _collect(events)
    logprobs = None
    if body.logprobs is not None:
        logprobs = _completion_logprobs(content, len(prefix))
    document = {
        **base,
        "choices": [
            {
                "index": 0,
                "text": prefix + result.text,
                "logprobs": logprobs,
                "finish_reason": _finish(result),
            }
        ],
        "usage": _usage(result),
        "appliance": envelope,
    }
    return JSONResponse(document, headers=headers)


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
