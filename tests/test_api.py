"""The daemon end to end: the official openai client against the real Gemma bundle.

One daemon (one loaded model) serves the whole module; generations stay short.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import openai
import pytest

from appliance.bundles.pack import pack, sign
from appliance.runtime.gpu import gpu_present
from appliance.settings import RuntimeSettings, ServerSettings, Settings
from tests.daemon import MODEL, Daemon, GemmaSource, gemma_source, start_daemon
from tests.onnx_models import write_embedding_source

SETTINGS = Settings(
    server=ServerSettings(
        max_tokens=64, default_max_tokens=16, max_body_bytes=64 * 1024, max_prompt_tokens=256
    ),
    runtime=RuntimeSettings(queue_size=2, refresh_interval_s=0.5),
)
STREAM_WAIT_S = 30  # seconds a held generation waits for the client to read its first text


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> GemmaSource:
    return gemma_source(tmp_path_factory.mktemp("gemma"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, source: GemmaSource) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("daemon") / "home"
    running = start_daemon(root, source, SETTINGS)
    yield running
    running.server.stop()


@pytest.fixture
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.infer_token, max_retries=0)


def test_models_lists_the_active_bundle(client: openai.OpenAI):
    models = {m.id: m for m in client.models.list().data}
    assert MODEL in models
    assert models[MODEL].model_extra["appliance"]["role"] == "chat"


def _signed_embedding_bundle(folder: Path, source: GemmaSource, name: str) -> Path:
    src = write_embedding_source(folder / f"src-{name}", name=name)
    bundle = folder / f"{name}.bundle"
    pack(src, bundle)
    sign(bundle, source.key.private)
    return bundle


@pytest.fixture(scope="module")
def embedder(daemon: Daemon, source: GemmaSource, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ONNX embedding bundle installed beside Gemma in the same daemon."""
    daemon.install(_signed_embedding_bundle(tmp_path_factory.mktemp("onnx"), source, "mini-embed"))
    return "mini-embed"


def test_embeddings(client: openai.OpenAI, embedder: str):
    raw = client.embeddings.with_raw_response.create(
        model=embedder, input=["the quick brown fox", "hello world"]
    )
    result = raw.parse()

    assert raw.headers["X-Appliance-Route"] == "local"
    assert [d.index for d in result.data] == [0, 1]
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 16 for v in vectors)
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-4 for v in vectors)
    assert vectors[0] != vectors[1]
    assert result.usage.prompt_tokens == 6
    assert embedder in {m.id for m in client.models.list().data}


def test_embeddings_base64_matches_floats(client: openai.OpenAI, embedder: str):
    floats = client.embeddings.create(model=embedder, input="hello world").data[0].embedding
    encoded = (
        client.embeddings.create(model=embedder, input="hello world", encoding_format="base64")
        .data[0]
        .embedding
    )
    raw = base64.b64decode(encoded)  # type: ignore[arg-type]
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)  # little-endian float32, as OpenAI's
    assert decoded == pytest.approx(floats, abs=1e-6)


def test_embeddings_from_a_chat_model_is_400(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input="x")
    assert caught.value.body["code"] == "wrong_model_role"


def test_generation_from_an_embedding_model_is_400(client: openai.OpenAI, embedder: str):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=embedder, prompt="x", max_tokens=2)
    assert caught.value.body["code"] == "wrong_model_role"


def test_bundle_dropped_in_the_inbox_is_served(
    daemon: Daemon, source: GemmaSource, client: openai.OpenAI, tmp_path: Path
):
    bundle = _signed_embedding_bundle(tmp_path, source, "inbox-embed")
    dropped = daemon.home.inbox_dir / bundle.name
    shutil.copyfile(bundle, dropped)
    settled = time.time() - 60
    os.utime(dropped, (settled, settled))  # a finished copy, not one still being written

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if "inbox-embed" in {m.id for m in client.models.list().data}:
            break
        time.sleep(0.2)

    assert "inbox-embed" in {m.id for m in client.models.list().data}
    assert not dropped.exists()
    assert (daemon.home.inbox_dir / "installed" / bundle.name).exists()
    assert client.embeddings.create(model="inbox-embed", input="hello").data[0].embedding


def test_chat_completion(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
    )
    answer = raw.parse()

    assert raw.headers["X-Appliance-Route"] == "local"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= 12
    assert answer.usage.prompt_tokens > 5
    assert answer.model_extra["appliance"]["route"] == "local"


def test_completion_is_deterministic_when_greedy(client: openai.OpenAI):
    first = client.completions.create(
        model=MODEL, prompt="def fibonacci(n):", max_tokens=12, temperature=0
    )
    second = client.completions.create(
        model=MODEL, prompt="def fibonacci(n):", max_tokens=12, temperature=0
    )
    assert first.choices[0].text == second.choices[0].text
    assert "return" in first.choices[0].text or "if" in first.choices[0].text
    assert first.usage.completion_tokens == 12
    assert first.choices[0].finish_reason == "length"


def test_seed_makes_sampling_repeatable(client: openai.OpenAI):
    texts = {
        client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=1.0, seed=7
        )
        .choices[0]
        .text
        for _ in range(2)
    }
    assert len(texts) == 1


def test_stop_sequence_ends_the_answer(client: openai.OpenAI):
    answer = client.completions.create(
        model=MODEL, prompt="def fibonacci(n):", max_tokens=40, temperature=0, stop=["return"]
    )
    assert "return" not in answer.choices[0].text
    assert answer.choices[0].finish_reason == "stop"


class HeldAfterFirstText:
    """A generation that stops handing on its events after the first one with text, until
    `release` is set: whether that text reached the client meanwhile is a matter of order."""

    def __init__(self, inner: Any, release: threading.Event, held: list[bool]) -> None:
        self._inner, self._release, self._held = inner, release, held

    def __iter__(self) -> Iterator[Any]:
        waiting = True
        for event in self._inner:
            yield event
            if waiting and event.text:
                waiting = False
                self._held.append(self._release.wait(STREAM_WAIT_S))

    @property
    def result(self) -> Any:
        return self._inner.result


def test_streaming_chunks_arrive_before_the_end(
    client: openai.OpenAI, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
):
    """Tokens go out as separate SSE events while the answer is still being generated.

    The model's generation is held after its first text until the client has read that text,
    so a server that buffered the stream cannot pass, however fast the model (ordering, not
    timing). How fast a stream is, time to first token and whole, is a benchmark figure:
    scripts/bench_serving.py.
    """
    backend = daemon.app.state.models.worker(MODEL).backend
    release = threading.Event()
    held: list[bool] = []
    generate = backend.generate
    monkeypatch.setattr(
        backend, "generate", lambda request: HeldAfterFirstText(generate(request), release, held)
    )
    pieces: list[str] = []
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to ten."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            release.set()  # the first text is here, and generation is still held
        if chunk.usage is not None:
            usage = chunk.usage

    assert held == [True]  # the first text reached the client before the generation went on
    assert len(pieces) >= 5  # one event per token, not one at the end
    assert usage is not None and usage.completion_tokens == 24


def test_streamed_and_whole_answers_agree(client: openai.OpenAI):
    whole = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=12, temperature=0
    )
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="The sky is", max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == whole.choices[0].text


def test_chat_logprobs(client: openai.OpenAI):
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob, abs=1e-4)
    assert "".join(i.token for i in content) == answer.choices[0].message.content


def test_completion_logprobs(client: openai.OpenAI):
    answer = client.completions.create(
        model=MODEL, prompt="1, 2, 3,", max_tokens=5, temperature=0, logprobs=2
    )
    logprobs = answer.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)


def test_missing_or_wrong_token_is_401(daemon: Daemon):
    no_token = httpx.post(f"{daemon.url}/v1/completions", json={"model": MODEL, "prompt": "x"})
    bad = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="apl_wrong", max_retries=0)

    assert no_token.status_code == 401
    assert no_token.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.body["code"] == "invalid_api_key"


def test_unknown_model_is_404(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert caught.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_tokens": 65}, "max_tokens is 65 tokens, over the limit of 64 tokens"),
        ({"prompt": "word " * 300}, "the prompt is"),
        ({"n": 2}, "n:"),
        ({"temperature": 3}, "temperature:"),
    ],
)
def test_limits_are_4xx_naming_the_limit(daemon: Daemon, body: dict, message: str):
    request = {"model": MODEL, "prompt": "hello", "max_tokens": 4, **body}
    response = httpx.post(
        f"{daemon.url}/v1/completions",
        json=request,
        headers={"Authorization": f"Bearer {daemon.infer_token}"},
        timeout=60,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) >= {"type", "message", "code"}
    assert message in error["message"]


def test_oversized_body_is_413(daemon: Daemon):
    response = httpx.post(
        f"{daemon.url}/v1/completions",
        content=json.dumps({"model": MODEL, "prompt": "x" * 70_000}),
        headers={
            "Authorization": f"Bearer {daemon.infer_token}",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["error"]["message"]


def test_foreign_host_header_is_refused(daemon: Daemon):
    response = httpx.get(f"{daemon.url}/v1/models", headers={"Host": "evil.example"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "host_not_allowed"


def test_health_and_readiness(daemon: Daemon):
    assert httpx.get(f"{daemon.url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{daemon.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"][MODEL]["loaded"] is True
    offload = gpu_present() and bool(llama_cpp.llama_supports_gpu_offload())
    assert ready.json()["models"][MODEL]["device"] == ("gpu" if offload else "cpu")


def test_full_queue_is_503_with_retry_after(daemon: Daemon):
    """4 slots generating (continuous batching) and queue_size 2 waiting: 6 of 8 are taken,
    the rest are turned away at once."""

    def ask(_: int) -> httpx.Response:
        return httpx.post(
            f"{daemon.url}/v1/completions",
            json={"model": MODEL, "prompt": "Tell me a story.", "max_tokens": 32, "temperature": 0},
            headers={"Authorization": f"Bearer {daemon.infer_token}"},
            timeout=120,
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(ask, range(8)))

    statuses = sorted(r.status_code for r in responses)
    assert daemon.app.state.models.worker(MODEL).backend.slots == 4
    assert statuses.count(200) >= 5
    refused = [r for r in responses if r.status_code == 503]
    assert refused, statuses
    assert all(r.headers["Retry-After"].isdigit() for r in refused)
    assert all(r.json()["error"]["code"] == "queue_full" for r in refused)


def test_client_disconnect_stops_generation(daemon: Daemon):
    worker = daemon.app.state.models.worker(MODEL)
    with httpx.stream(
        "POST",
        f"{daemon.url}/v1/completions",
        json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 64, "stream": True},
        headers={"Authorization": f"Bearer {daemon.infer_token}"},
        timeout=60,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # one chunk, then hang up
    deadline = time.monotonic() + 5
    while worker.busy and time.monotonic() < deadline:
        time.sleep(0.02)
    # 64 tokens take ~1.6 s here; the worker is free well before that
    assert not worker.busy


def test_model_swap_under_load_fails_no_request(
    daemon: Daemon, source: GemmaSource, tmp_path: Path
):
    v2 = source.bundle(tmp_path, version="1.1.0", sequence=2)

    def ask(i: int) -> str:
        client = openai.OpenAI(
            base_url=f"{daemon.url}/v1", api_key=daemon.infer_token, max_retries=0, timeout=120
        )
        answer = client.completions.create(
            model=MODEL, prompt=f"Item {i}:", max_tokens=6, temperature=0
        )
        return answer.model_extra["appliance"]["model_version"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        before = [pool.submit(ask, i) for i in range(2)]
        daemon.install(v2)  # loads 1.1.0 beside 1.0.0, then swaps
        after = [pool.submit(ask, i) for i in range(2)]
        versions = [f.result() for f in before + after]

    assert all(v in ("1.0.0", "1.1.0") for v in versions)
    assert versions[-1] == "1.1.0"
    models = httpx.get(
        f"{daemon.url}/v1/models", headers={"Authorization": f"Bearer {daemon.infer_token}"}
    ).json()
    assert models["data"][0]["appliance"]["version"] == "1.1.0"
