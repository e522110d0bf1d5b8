"""The OpenAI-compatible routes: models, chat completions, completions, embeddings.

The inference routes only translate: the HTTP body into one ``Query``, the pipeline's
``Outcome`` (``appliance.governance.pipeline``, which owns the order of events) back into
OpenAI's shapes, one JSON document or SSE chunks. Every inference response says where it was
answered: the ``X-Appliance-Route`` header and an ``appliance`` key in the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from appliance.api import formats, inference
from appliance.api.errors import APIError, limit_exceeded
from appliance.api.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from appliance.api.security import require_infer
from appliance.governance.pipeline import Outcome, Pipeline, Query
from appliance.runtime.backend import GenerationRequest, GenerationResult, TokenEvent
from appliance.runtime.manager import ModelManager, ModelWorker
from appliance.settings import ServerSettings

router = APIRouter(dependencies=[Depends(require_infer)])

ROUTE_HEADER = "X-Appliance-Route"
GENERATIVE = ("chat", "completion")


def _manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.models
    return manager


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


def _pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.governor
    return pipeline


@dataclass
class _WorkerModel:
    """The local model of one request, as the pipeline uses it: a worker and the prompt."""

    worker: ModelWorker
    source: inference.PromptSource
    limits: ServerSettings

    async def check_prompt(self) -> None:
        await inference.check_prompt(self.worker, self.source, self.limits)

    def generate(
        self, request: GenerationRequest, stream: bool
    ) -> AsyncGenerator[TokenEvent | GenerationResult, None]:
        return inference.generate(self.worker, self.source, request, self.limits, stream)


def refusal(outcome: Outcome, envelope: dict[str, Any]) -> APIError:
    """A refused request: 403, with the route header and the decision in the body."""
    return APIError(
        403,
        "the policy refuses this request: " + "; ".join(outcome.reasons[-2:]),
        type="policy_error",
        code="policy_refused",
        headers=outcome.headers(),
        appliance=envelope,
    )


async def _respond(
    request: Request,
    worker: ModelWorker,
    query: Query,
    source: inference.PromptSource,
    fmt: formats.Format,
    include_usage: bool,
) -> Any:
    """Answer `query` under the policy (the pipeline), as one JSON document or as SSE."""
    pipeline = _pipeline(request)
    label = pipeline.active.current.label
    local = _WorkerModel(worker, source, request.app.state.settings.server)
    events = pipeline.run(query, local)
    first = await anext(events)  # errors before the first token still get a JSON error

    def envelope(outcome: Outcome) -> dict[str, Any]:
        return outcome.envelope(worker.spec.version, worker.spec.digest, label)

    if isinstance(first, Outcome):  # nothing went out live: the whole answer at once
        if first.route == "refused":
            raise refusal(first, envelope(first))
        return _finished(fmt, first, envelope(first), query.stream, include_usage)

    async def live() -> AsyncIterator[str]:
        async with contextlib.aclosing(events):  # a client gone closes the pipeline's run
            for chunk in fmt.opening():
                yield formats.sse(chunk)
            item: TokenEvent | Outcome = first
            while not isinstance(item, Outcome):
                piece = fmt.piece(item.text, item)
                if piece is not None:
                    yield formats.sse(piece)
                item = await anext(events)
            yield formats.sse(fmt.closing(formats.finish_of(item.finish_reason), envelope(item)))
            if include_usage:
                yield formats.sse(
                    fmt.usage(formats.usage_of(item.prompt_tokens, item.completion_tokens))
                )
            yield "data: [DONE]\n\n"

    return StreamingResponse(
        live(), media_type="text/event-stream", headers={ROUTE_HEADER: "local"}
    )


def _finished(
    fmt: formats.Format,
    outcome: Outcome,
    envelope: dict[str, Any],
    stream: bool,
    include_usage: bool,
) -> Any:
    """A complete answer as one document, or replayed as a stream (an upstream's answer, with
    no token events, in one piece)."""
    usage = formats.usage_of(outcome.prompt_tokens, outcome.completion_tokens)
    finish = formats.finish_of(outcome.finish_reason)
    events = outcome.events
    if not stream:
        document = {**fmt.document(outcome.text, finish, usage, events), "appliance": envelope}
        return JSONResponse(document, headers=outcome.headers())

    async def chunks() -> AsyncIterator[str]:
        for chunk in fmt.opening():
            yield formats.sse(chunk)
        pieces = (
            [fmt.piece(outcome.text, None)]
            if events is None
            else [fmt.piece(e.text, e) for e in events]
        )
        for piece in pieces:
            if piece is not None:
                yield formats.sse(piece)
        yield formats.sse(fmt.closing(finish, envelope))
        if include_usage:
            yield formats.sse(fmt.usage(usage))
        yield "data: [DONE]\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream", headers=outcome.headers())


def _device(request: Request) -> str | None:
    return getattr(request.state, "device", None)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    worker = await _generative_worker(request, body.model)
    wants_logprobs = body.logprobs or bool(body.top_logprobs)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    query = Query(
        endpoint="chat",
        model=body.model,
        roles=tuple(m["role"] for m in messages),
        texts=tuple(m["content"] for m in messages),
        stops=tuple(body.stops),
        max_tokens=_max_tokens(body.max_completion_tokens or body.max_tokens, request),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        logprobs=wants_logprobs,
        top_logprobs=body.top_logprobs or 0,
        stream=body.stream,
        escalate=body.appliance.escalate,
        device=_device(request),
    )
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    fmt = formats.ChatFormat(base, wants_logprobs)
    source = inference.PromptSource(messages=messages)
    return await _respond(request, worker, query, source, fmt, include_usage)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    worker = await _generative_worker(request, body.model)
    query = Query(
        endpoint="completion",
        model=body.model,
        roles=("user",),
        texts=(body.prompt_text,),
        stops=tuple(body.stops),
        max_tokens=_max_tokens(body.max_tokens, request),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
        stream=body.stream,
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
    source = inference.PromptSource(text=body.prompt_text)
    return await _respond(request, worker, query, source, fmt, include_usage)


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
    data: list[Any]
    if body.encoding_format == "base64":
        import base64
        import struct

        data = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
    else:
        data = list(vectors)
    document = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)],
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "appliance": _envelope(worker.spec),
    }
    return JSONResponse(document, headers={ROUTE_HEADER: "local"})
