"""A fake proprietary API for tests: the OpenAI and the Anthropic shape, with injected faults.

It is a small HTTP/1.1 server on asyncio streams, not a web framework, because the faults
that matter for store-and-forward live below HTTP: a connection dropped after the request
was read, an answer that never comes, a body shorter than its Content-Length, a body that
trickles in. It runs its own event loop in a background thread, so a test drives it with
plain method calls while the code under test runs in the test's loop.

    with FakeUpstream(api_key="sk-test") as fake:
        fake.fail(503, times=2)               # the next two requests get 503
        settings = UpstreamSettings(name="x", kind="openai", base_url=fake.url, ...)

Routes under ``/v1``: ``POST /chat/completions`` (OpenAI), ``POST /messages`` (Anthropic),
``GET /models`` (both: the probe). Every answer reports the fixed usage
``PROMPT_TOKENS``/``COMPLETION_TOKENS``; the model is the request's unless ``model`` is
given.

Faults form a FIFO: each request takes the first queued fault that applies to it. Probes
(``GET``) only take faults queued with ``probes=True``; ``down()`` fails everything,
probes included, until ``up()``.

Idempotency: a 200 answer is stored under the request's ``Idempotency-Key``; a later
request with the same key gets the same bytes back and is not counted again, so
``accepted_keys`` (a Counter) shows whether any escalation was ever accepted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from tests.pki import TestPKI

PROMPT_TOKENS = 11  # usage.prompt_tokens / input_tokens of every answer
COMPLETION_TOKENS = 7  # usage.completion_tokens / output_tokens of every answer
PREFIX = "/v1"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # the parsed JSON body; None when empty, the raw text when not JSON


@dataclass(frozen=True)
class _Fault:
    kind: str  # fail | timeout | drop | slow_body | truncate | malformed | lose_answer
    probes: bool = False
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def default_reply(body: dict[str, Any]) -> str:
    """``"upstream: "`` + the last user message, so placeholders come back in the answer."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content", "")
            if isinstance(content, list):  # Anthropic content blocks
                content = "".join(
                    block.get("text", "") for block in content if isinstance(block, dict)
                )
            return "upstream: " + str(content)
    return "upstream: "


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data).encode()


def _error(status: int, kind: str, message: str) -> _Answer:
    return _Answer(status, _json_bytes({"error": {"type": kind, "message": message}}))


class FakeUpstream:
    """See the module docstring. ``tls``: serve HTTPS and require a client certificate
    signed by ``tls.ca_cert``; ``rogue``: present the certificate of ``tls``'s other CA.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        tls: TestPKI | None = None,
        rogue: bool = False,
        model: str | None = None,
    ) -> None:
        self.api_key = api_key
        self.model = model
        self.reply: Callable[[dict[str, Any]], str] = default_reply
        self.accepted_keys: Counter[str] = Counter()
        self.latency_s = 0.0  # seconds before each answer (not probes), like a real API
        self.loop_errors: list[str] = []  # what the server loop swallowed (TLS refusals…)
        self._tls = tls
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults: deque[_Fault] = deque()
        self._answers: dict[str, _Answer] = {}
        self._down = False
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped = False
        self._server: asyncio.Server | None = None
        self._startup_error: BaseException | None = None
        self.port = 0
        context = self._server_context(tls, rogue) if tls else None
        self._thread = threading.Thread(
            target=self._serve, args=(context,), name="fake-upstream", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake upstream did not start")
        if self._startup_error is not None:
            raise RuntimeError("the fake upstream did not start") from self._startup_error

    # -- test-facing API ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL an UpstreamSettings points at."""
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{PREFIX}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy), probes included."""
        with self._lock:
            return list(self._requests)

    def fail(
        self,
        status: int,
        times: int = 1,
        retry_after: float | str | None = None,
        *,
        probes: bool = False,
    ) -> None:
        """The next ``times`` requests get ``status`` (with ``Retry-After`` when given)."""
        after = None if retry_after is None else str(retry_after)
        for _ in range(times):
            self._push(_Fault("fail", probes, status=status, retry_after=after))

    def timeout(self, seconds: float, *, probes: bool = False) -> None:
        """Read the next request, answer nothing for ``seconds``, then close."""
        self._push(_Fault("timeout", probes, seconds=seconds))

    def drop(self, *, probes: bool = False) -> None:
        """Close the connection right after reading the next request (nothing processed)."""
        self._push(_Fault("drop", probes))

    def lose_answer(self, *, probes: bool = False) -> None:
        """Process the next request (answer stored, key accepted), then close unanswered."""
        self._push(_Fault("lose_answer", probes))

    def slow_body(self, seconds: float, *, probes: bool = False) -> None:
        """Send the head and half the body of the next answer, wait ``seconds``, send the rest."""
        self._push(_Fault("slow_body", probes, seconds=seconds))

    def truncate(self, *, probes: bool = False) -> None:
        """Announce a longer Content-Length than the next answer's body, send it, close."""
        self._push(_Fault("truncate", probes))

    def malformed(self, *, probes: bool = False) -> None:
        """Answer the next request with 200 and a body that is not JSON."""
        self._push(_Fault("malformed", probes))

    def down(self) -> None:
        """Every request, probes included, fails with a dropped connection until ``up()``."""
        self._down = True

    def up(self) -> None:
        self._down = False

    def stop(self) -> None:
        """Close every connection and the listening socket; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _push(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, probe: bool) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.probes or not probe:
                    self._faults.remove(fault)
                    return fault
        return None

    # -- the server loop ----------------------------------------------------------------

    @staticmethod
    def _server_context(pki: TestPKI, rogue: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if rogue:
            context.load_cert_chain(pki.rogue_server_cert, pki.rogue_server_key)
        else:
            context.load_cert_chain(pki.server_cert, pki.server_key)
        context.load_verify_locations(cafile=pki.ca_cert)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _serve(self, context: ssl.SSLContext | None) -> None:
        asyncio.set_event_loop(self._loop)
        # Refused handshakes are the point of some tests: keep them off the test's stderr.
        self._loop.set_exception_handler(
            lambda _loop, ctx: self.loop_errors.append(str(ctx.get("message")))
        )
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(
                    self._connection,
                    "127.0.0.1",
                    0,
                    ssl=context,
                    ssl_handshake_timeout=5 if context else None,
                )
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:
            self._startup_error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None or not await self._respond(request, writer):
                    break
        except (OSError, ssl.SSLError, ValueError, asyncio.IncompleteReadError):
            pass  # a client that went away, or spoke garbage: nothing to answer
        except asyncio.CancelledError:
            pass  # stop()
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1)
            self._tasks.discard(task)

    async def _read_request(self, reader: asyncio.StreamReader) -> RecordedRequest | None:
        line = await reader.readline()
        if not line.strip():
            return None
        method, target, _version = line.decode("latin-1").split()
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        data = await reader.readexactly(length) if length else b""
        body: Any = None
        if data:
            try:
                body = json.loads(data)
            except ValueError:
                body = data.decode("utf-8", "replace")
        request = RecordedRequest(method, target.split("?", 1)[0], headers, body)
        with self._lock:
            self._requests.append(request)
        return request

    async def _respond(self, request: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False closes the connection."""
        if self._down:
            return False
        keep_alive = request.headers.get("connection", "").lower() != "close"
        if self.latency_s and request.method != "GET":
            await asyncio.sleep(self.latency_s)  # a real API thinks for a while
        fault = self._take_fault(probe=request.method == "GET")
        kind = fault.kind if fault else None
        if fault is not None and kind == "drop":
            return False
        if fault is not None and kind == "timeout":
            await asyncio.sleep(fault.seconds)
            return False
        if fault is not None and kind == "fail":
            extra = (("retry-after", fault.retry_after),) if fault.retry_after else ()
            answer = _error(fault.status, "injected_fault", f"injected HTTP {fault.status}")
            await self._write(writer, _Answer(answer.status, answer.body, extra), keep_alive)
            return keep_alive
        try:
            answer = self._route(request)
        except Exception as e:  # a test's reply() that raised: a 500, visible in the body
            answer = _error(500, "server_error", f"fake upstream: {type(e).__name__}: {e}")
        if kind == "lose_answer":
            return False
        if kind == "malformed":
            answer = _Answer(200, b'{"choices": [{"message": ')
        if kind == "truncate":
            await self._write(writer, answer, False, extra_length=64)
            return False
        if fault is not None and kind == "slow_body":
            await self._write(writer, answer, keep_alive, pause_s=fault.seconds)
            return keep_alive
        await self._write(writer, answer, keep_alive)
        return keep_alive

    @staticmethod
    async def _write(
        writer: asyncio.StreamWriter,
        answer: _Answer,
        keep_alive: bool,
        *,
        extra_length: int = 0,
        pause_s: float = 0.0,
    ) -> None:
        try:
            reason = HTTPStatus(answer.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [
            f"HTTP/1.1 {answer.status} {reason}",
            "content-type: application/json",
            f"content-length: {len(answer.body) + extra_length}",
            f"connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{name}: {value}" for name, value in answer.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if pause_s:
            half = len(answer.body) // 2
            writer.write(head + answer.body[:half])
            await writer.drain()
            await asyncio.sleep(pause_s)
            writer.write(answer.body[half:])
        else:
            writer.write(head + answer.body)
        await writer.drain()

    # -- the API ------------------------------------------------------------------------

    def _route(self, request: RecordedRequest) -> _Answer:
        path = request.path
        if not path.startswith(PREFIX + "/"):
            return _error(404, "not_found_error", f"no route {path}")
        route = (request.method, path[len(PREFIX) :])
        if route == ("GET", "/models"):
            refused = self._check_key(request, bearer=True, x_api_key=True)
            return refused or _Answer(200, self._models())
        if route == ("POST", "/chat/completions"):
            refused = self._check_key(request, bearer=True, x_api_key=False)
            return refused or self._idempotent(request, self._openai)
        if route == ("POST", "/messages"):
            refused = self._check_key(request, bearer=False, x_api_key=True)
            if refused:
                return refused
            if not request.headers.get("anthropic-version"):
                return _error(400, "invalid_request_error", "anthropic-version header missing")
            return self._idempotent(request, self._anthropic)
        return _error(404, "not_found_error", f"no route {request.method} {path}")

    def _check_key(
        self, request: RecordedRequest, *, bearer: bool, x_api_key: bool
    ) -> _Answer | None:
        """401 unless the expected key came in an accepted header.

        Like a real API, the 401 body echoes the key that was given: a client must not
        copy it into its error message.
        """
        if self.api_key is None:
            return None
        given = []
        if bearer:
            auth = request.headers.get("authorization", "")
            if auth.startswith("Bearer "):
                given.append(auth[len("Bearer ") :])
        if x_api_key and "x-api-key" in request.headers:
            given.append(request.headers["x-api-key"])
        if self.api_key in given:
            return None
        shown = given[0] if given else "(none)"
        return _Answer(
            401,
            _json_bytes(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "message": f"Incorrect API key provided: {shown}",
                    }
                }
            ),
        )

    def _idempotent(
        self, request: RecordedRequest, generate: Callable[[dict[str, Any]], _Answer]
    ) -> _Answer:
        key = request.headers.get("idempotency-key")
        with self._lock:
            if key and key in self._answers:
                return self._answers[key]
        if not isinstance(request.body, dict):
            return _error(400, "invalid_request_error", "the body is not a JSON object")
        answer = generate(request.body)
        if answer.status == 200 and key:
            with self._lock:
                self._answers[key] = answer
                self.accepted_keys[key] += 1
        return answer

    def _model(self, body: dict[str, Any]) -> str:
        return self.model or str(body.get("model") or "fake-model")

    def _models(self) -> bytes:
        return _json_bytes(
            {"object": "list", "data": [{"id": self.model or "fake-model", "object": "model"}]}
        )

    def _openai(self, body: dict[str, Any]) -> _Answer:
        if not body.get("model") or not isinstance(body.get("messages"), list):
            return _error(400, "invalid_request_error", "model and messages are required")
        text = self.reply(body)
        return _Answer(
            200,
            _json_bytes(
                {
                    "id": f"chatcmpl-{next(self._ids)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": self._model(body),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": PROMPT_TOKENS,
                        "completion_tokens": COMPLETION_TOKENS,
                        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
                    },
                }
            ),
        )

    def _anthropic(self, body: dict[str, Any]) -> _Answer:
        messages = body.get("messages")
        if not body.get("model") or not body.get("max_tokens") or not isinstance(messages, list):
            return _error(400, "invalid_request_error", "model, max_tokens, messages required")
        roles = [m.get("role") for m in messages if isinstance(m, dict)]
        if any(role not in ("user", "assistant") for role in roles) or any(
            a == b for a, b in itertools.pairwise(roles)
        ):
            return _error(400, "invalid_request_error", "roles must alternate user/assistant")
        text = self.reply(body)
        return _Answer(
            200,
            _json_bytes(
                {
                    "id": f"msg_{next(self._ids)}",
                    "type": "message",
                    "role": "assistant",
                    "model": self._model(body),
                    "content": [{"type": "text", "text": text}] if text else [],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS},
                }
            ),
        )
