"""Between the event loop and the model threads: submit work, await its events.

A generation runs on its model's worker thread and hands each token to the event loop as it
comes. When the consumer stops listening (the client disconnected, the request timed out,
or the answer is complete) the request's cancel event is set, and the worker stops at the
next token instead of generating for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance import metrics
from appliance.api.errors import APIError, limit_exceeded
from appliance.policy.schema import Policy
from appliance.runtime.backend import Backend, GenerationRequest, GenerationResult, TokenEvent
from appliance.runtime.manager import Job, ModelManager, ModelWorker
from appliance.settings import ServerSettings


@dataclass(frozen=True)
class PromptSource:
    """Either raw completion text or chat messages (rendered on the model's thread)."""

    text: str | None = None
    messages: Sequence[dict[str, Any]] | None = None

    def render(self, backend: Backend) -> str:
        if self.messages is not None:
            return backend.render_chat(self.messages)
        return self.text or ""


class _Bridge:
    """Carries items from a worker thread into an asyncio queue, safely."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def put_all(self, items: list[Any]) -> None:
        """Hand over many items with one wake-up of the event loop."""
        def put() -> None:
            for item in items:
                self.queue.put_nowait(item)

        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(put)

    def put(self, item: Any) -> None:
        # RuntimeError: the loop is gone (shutdown); nobody is waiting for this item.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


async def _drain(
    bridge: _Bridge, deadline: float, cancel: Callable[[], None]
) -> AsyncIterator[Any]:
    try:
        while True:
            remaining = deadline - bridge.loop.time()
            if remaining <= 0:
                raise TimeoutError
            item = await asyncio.wait_for(bridge.queue.get(), remaining)
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, GenerationResult | _Done):
                return
    except TimeoutError as e:
        raise APIError(
            504,
            "request_timeout_s exceeded before the answer was complete",
            type="timeout_error",
            code="request_timeout",
        ) from e
    finally:
        cancel()


class _Clock:
    """Times one generation on the model's thread for the metrics (a few ns per token)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last = self.start
        self.tokens = 0

    def tick(self) -> None:
        self.last = time.perf_counter()
        if self.first is None:
            self.first = self.last
        self.tokens += 1

    def done(self, result: GenerationResult) -> None:
        metrics.PROMPT_TOKENS.labels(self.model).inc(result.prompt_tokens)
        metrics.GENERATED_TOKENS.labels(self.model).inc(result.completion_tokens)
        if self.first is not None:
            metrics.TIME_TO_FIRST_TOKEN.labels(self.model).observe(self.first - self.start)
            if self.tokens > 1:
                per_token = (self.last - self.first) / (self.tokens - 1)
                metrics.TIME_PER_TOKEN.labels(self.model).observe(per_token)


@dataclass(frozen=True)
class _Done:
    value: Any


# A prompt's tokens never outnumber its UTF-8 bytes (every token spells at least one byte),
# plus what a chat template adds: at most this many tokens per message and per prompt.
_TEMPLATE_TOKENS_PER_MESSAGE = 32
_TEMPLATE_TOKENS = 256


def _surely_within(source: PromptSource, limit: int) -> bool:
    """Whether `source` is certainly within `limit` tokens, without a tokenizer."""
    texts = (
        [source.text or ""]
        if source.messages is None
        else [str(m.get("content") or "") for m in source.messages]
    )
    bound = _TEMPLATE_TOKENS + _TEMPLATE_TOKENS_PER_MESSAGE * len(texts)
    return bound + sum(len(t.encode("utf-8")) for t in texts) <= limit


async def check_prompt(worker: ModelWorker, source: PromptSource, limits: ServerSettings) -> None:
    """Refuse (400) a prompt over ``max_prompt_tokens`` before any route is taken.

    `generate` checks the same limit before the local model runs; a request that goes to
    the upstream first (``prefer``) never gets there, and must not be paid for when the box
    would have refused it. Short prompts are passed without tokenizing; longer ones are
    counted on the model's thread, with its own tokenizer and chat template.
    """
    if _surely_within(source, limits.max_prompt_tokens):
        return
    bridge = _Bridge()
    deadline = bridge.loop.time() + limits.request_timeout_s

    def run(backend: Backend) -> None:
        prompt_tokens = backend.count_tokens(source.render(backend))
        if prompt_tokens > limits.max_prompt_tokens:
            raise limit_exceeded(
                "the prompt", prompt_tokens, limits.max_prompt_tokens, "tokens", "messages"
            )
        bridge.put(_Done(prompt_tokens))

    cancelled = asyncio.Event()
    worker.submit(Job(run=run, cancelled=cancelled.is_set, fail=bridge.put))
    async for _ in _drain(bridge, deadline, cancelled.set):
        pass


async def generate(
    worker: ModelWorker,
    source: PromptSource,
    request: GenerationRequest,
    limits: ServerSettings,
    stream: bool = True,
) -> AsyncGenerator[TokenEvent | GenerationResult, None]:
    """Queue a generation on `worker`; yield its TokenEvents, then its GenerationResult.

    With `stream` False the events travel in one hand-over at the end: the event loop is
    not woken once per token while the model's threads want both cores.
    """
    bridge = _Bridge()
    deadline = bridge.loop.time() + limits.request_timeout_s

    def run(backend: Backend) -> None:
        request.prompt = source.render(backend)
        prompt_tokens = backend.count_tokens(request.prompt)
        if prompt_tokens > limits.max_prompt_tokens:
            raise limit_exceeded(
                "the prompt", prompt_tokens, limits.max_prompt_tokens, "tokens", "messages"
            )
        clock = _Clock(worker.spec.name)
        generation = backend.generate(request)
        if stream:
            for event in generation:
                clock.tick()
                bridge.put(event)
            clock.done(generation.result)
            bridge.put(generation.result)
        else:
            events = []
            for event in generation:
                clock.tick()
                events.append(event)
            clock.done(generation.result)
            bridge.put_all([*events, generation.result])

    worker.submit(Job(run=run, cancelled=request.cancel.is_set, fail=bridge.put))
    async for item in _drain(bridge, deadline, request.cancel.set):
        yield item


async def embed(
    worker: ModelWorker, texts: Sequence[str], limits: ServerSettings
) -> tuple[list[list[float]], int]:
    """Embeddings of `texts` from `worker`'s model, and the input token count."""
    bridge = _Bridge()
    deadline = bridge.loop.time() + limits.request_timeout_s
    cancelled = asyncio.Event()

    def run(backend: Backend) -> None:
        bridge.put(_Done(backend.embed(texts)))

    worker.submit(Job(run=run, cancelled=cancelled.is_set, fail=bridge.put))
    async for item in _drain(bridge, deadline, cancelled.set):
        embedded: tuple[list[list[float]], int] = item.value
        return embedded
    raise RuntimeError("embedding produced no result")


async def classify(
    worker: ModelWorker, texts: Sequence[str], limits: ServerSettings
) -> list[dict[str, float]]:
    """Label probabilities for each of `texts` from `worker`'s classifier model."""
    bridge = _Bridge()
    deadline = bridge.loop.time() + limits.request_timeout_s
    cancelled = asyncio.Event()

    def run(backend: Backend) -> None:
        bridge.put(_Done(backend.classify(texts)))

    worker.submit(Job(run=run, cancelled=cancelled.is_set, fail=bridge.put))
    async for item in _drain(bridge, deadline, cancelled.set):
        labels: list[dict[str, float]] = item.value
        return labels
    raise RuntimeError("classification produced no result")


def hardness_check(
    models: ModelManager, limits: ServerSettings
) -> Callable[[Policy, str], Awaitable[str | None]]:
    """The policy's optional pre-check classifier as the pipeline asks it: a reason to call
    a text hard, or None. It runs on the classifier bundle's own model worker."""

    async def check(policy: Policy, text: str) -> str | None:
        precheck = policy.precheck
        worker = models.loaded_worker(precheck.classifier)
        if worker is None:  # not loaded yet: load it off the event loop
            worker = await asyncio.to_thread(models.worker, precheck.classifier)
        labels = await classify(worker, [text], limits)
        score = labels[0].get(precheck.classifier_label, 0.0)
        if score >= precheck.classifier_threshold:
            return f"classifier {precheck.classifier}: {precheck.classifier_label} {score:.2f}"
        return None

    return check
