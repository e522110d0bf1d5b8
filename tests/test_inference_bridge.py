"""The bridge between the event loop and model threads: timeouts and cancellation.

A slow stand-in backend (it yields a token every 50 ms) makes the timing visible; the real
backends are exercised in test_api.py and test_llama_backend.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.api.errors import APIError
from appliance.api.inference import PromptSource, generate
from appliance.runtime.backend import GenerationRequest, GenerationResult, ModelSpec, TokenEvent
from appliance.runtime.manager import ModelWorker
from appliance.settings import ServerSettings

SPEC = ModelSpec("slow", "1", "d", Path("/nonexistent"), "gguf", "completion", 64, Path("/x"))


class SlowGeneration:
    def __init__(self, request: GenerationRequest, produced: list[int]) -> None:
        self.request, self.produced = request, produced

    def __iter__(self) -> Iterator[TokenEvent]:
        for i in range(self.request.max_tokens):
            if self.request.cancel.is_set():
                return
            time.sleep(0.05)
            self.produced.append(i)
            yield TokenEvent(i, "x", -0.1, token="x")

    @property
    def result(self) -> GenerationResult:
        return GenerationResult("x" * len(self.produced), "length", 1, len(self.produced), 0.0)


class SlowBackend:
    spec = SPEC
    device = "cpu"
    concurrency = 1
    reused_tokens = 0

    def __init__(self) -> None:
        self.produced: list[int] = []

    def load(self) -> None: ...

    def close(self) -> None: ...

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, request: GenerationRequest) -> SlowGeneration:
        return SlowGeneration(request, self.produced)

    def embed(self, texts: object) -> tuple[list[list[float]], int]:
        raise NotImplementedError


async def _consume(worker: ModelWorker, request: GenerationRequest, limits: ServerSettings):
    return [item async for item in generate(worker, PromptSource(text="a b"), request, limits)]


def test_request_timeout_is_504_and_stops_the_generation():
    backend = SlowBackend()
    worker = ModelWorker(backend, queue_size=2)  # type: ignore[arg-type]
    request = GenerationRequest(prompt="", max_tokens=100)
    limits = ServerSettings(request_timeout_s=0.3)

    with pytest.raises(APIError) as caught:
        asyncio.run(_consume(worker, request, limits))

    assert caught.value.status == 504 and "request_timeout_s" in caught.value.message
    assert request.cancel.is_set()
    time.sleep(0.2)
    stopped_at = len(backend.produced)
    assert stopped_at < 20  # far fewer than the 100 asked for
    time.sleep(0.2)
    assert len(backend.produced) == stopped_at
    worker.retire()


def test_prompt_over_the_limit_is_refused_before_generating():
    backend = SlowBackend()
    worker = ModelWorker(backend, queue_size=2)  # type: ignore[arg-type]
    limits = ServerSettings(max_prompt_tokens=1)

    with pytest.raises(APIError, match="the prompt is 2 tokens, over the limit of 1 tokens"):
        asyncio.run(_consume(worker, GenerationRequest(prompt="", max_tokens=5), limits))

    assert backend.produced == []
    worker.retire()


def test_a_cancelled_job_waiting_in_the_queue_never_runs():
    backend = SlowBackend()
    worker = ModelWorker(backend, queue_size=4)  # type: ignore[arg-type]
    gate = threading.Event()
    ran: list[str] = []
    from appliance.runtime.manager import Job

    worker.submit(Job(run=lambda b: gate.wait(5), cancelled=lambda: False, fail=print))
    cancelled = threading.Event()
    worker.submit(Job(run=lambda b: ran.append("late"), cancelled=cancelled.is_set, fail=print))
    cancelled.set()
    gate.set()
    worker.retire()
    worker.join(5)

    assert ran == []
